"""The test hubs are the contract edgellm is held to, so they are held to the client libraries: each answer
here is read by huggingface_hub's or modelscope_hub's own code, the way it reads the live hubs' answers."""

from __future__ import annotations

import pytest
from hubserver import MS_NO_ACCESS, MS_NO_REVISION, MS_NOT_FOUND, Repo
from hubtesting import caches, checkpoint_files, fake_hub, fake_modelscope  # noqa: F401  (fixtures)

GGUF = b"GGUF\x03\x00\x00\x00" + bytes(64)


def test_lfs_files_redirect_to_another_origin_with_xet_metadata(fake_hub):
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url

    fake_hub.repos["org/x"] = Repo({"x-Q4_K_M.gguf": GGUF, "config.json": b"{}"})
    meta = get_hf_file_metadata(hf_hub_url("org/x", "x-Q4_K_M.gguf"))
    assert meta.size == len(GGUF) and meta.commit_hash == fake_hub.repos["org/x"].sha
    assert meta.location.startswith(fake_hub.urls["storage"])  # the CDN: not followed, no login sent there
    assert meta.xet_file_data is not None and len(meta.xet_file_data.file_hash) == 64
    assert meta.xet_file_data.refresh_route.startswith(f"{constants.ENDPOINT}/api/models/org/x/xet-read-token/")
    small = get_hf_file_metadata(hf_hub_url("org/x", "config.json"))  # a plain git blob: served in place
    assert small.xet_file_data is None and small.location.startswith(fake_hub.urls["hub"])

    fake_hub.xet = False
    assert get_hf_file_metadata(hf_hub_url("org/x", "x-Q4_K_M.gguf")).xet_file_data is None


def test_errors_are_the_hub_s_typed_errors(fake_hub):
    from huggingface_hub import HfApi, errors, get_hf_file_metadata, hf_hub_url

    fake_hub.repos["org/x"] = Repo({"x.gguf": GGUF}, refs={"refs/pr/1"})
    fake_hub.repos["org/gated"] = Repo({"x.gguf": GGUF}, gated=True)
    api = HfApi()
    assert api.model_info("org/x", revision="refs/pr/1").sha == fake_hub.repos["org/x"].sha
    with pytest.raises(errors.RevisionNotFoundError):
        api.model_info("org/x", revision="refs/pr/2")
    with pytest.raises(errors.RevisionNotFoundError):
        api.list_repo_tree("org/x", revision="v1").__next__()
    with pytest.raises(errors.RepositoryNotFoundError):
        api.model_info("org/missing")
    with pytest.raises(errors.GatedRepoError):
        get_hf_file_metadata(hf_hub_url("org/gated", "x.gguf"))
    with pytest.raises(errors.RemoteEntryNotFoundError):
        get_hf_file_metadata(hf_hub_url("org/x", "nope.gguf"))


def test_uploads_negotiate_lfs_and_cards_are_validated(fake_hub, tmp_path):
    import warnings

    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub._commit_api import _fetch_upload_modes

    api = HfApi(token=fake_hub.token)
    api.create_repo("me/x")
    api.create_repo("me/x", exist_ok=True)  # 409, as the Hub answers for a repo that exists
    (tmp_path / "x.gguf").write_bytes(GGUF)
    (tmp_path / "README.md").write_text("# x\n")
    ops = [CommitOperationAdd("x.gguf", str(tmp_path / "x.gguf")), CommitOperationAdd("README.md", str(tmp_path / "README.md"))]
    _fetch_upload_modes(ops, "model", "me/x", api._build_hf_headers(), "main", endpoint=api.endpoint)
    assert [op._upload_mode for op in ops] == ["lfs", "regular"]

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        api._validate_yaml("# no metadata\n")
    assert "empty or missing yaml metadata in repo card" in str(seen[0].message)
    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        api._validate_yaml("---\nlicense: [mit\n---\n# x\n")


def test_modelscope_tells_its_404s_apart_by_code(fake_modelscope):
    import modelscope_hub as ms

    fake_modelscope.repos["org/gated"] = Repo(checkpoint_files(), gated=True)
    fake_modelscope.repos["org/private"] = Repo(checkpoint_files(), private=True)
    fake_modelscope.repos["org/x"] = Repo(checkpoint_files())
    api = ms.HubApi()
    for repo_id, revision, code in (("org/missing", None, MS_NOT_FOUND), ("org/private", None, MS_NOT_FOUND),
                                    ("org/gated", None, MS_NO_ACCESS), ("org/x", "v9", MS_NO_REVISION)):  # fmt: skip
        with pytest.raises(ms.NotExistError) as caught:
            api.list_repo_files(repo_id, "model", revision=revision)
        assert caught.value.status_code == 404 and caught.value.response_body["Code"] == code
    assert {f.path for f in api.list_repo_files("org/x", "model")} == set(checkpoint_files())
