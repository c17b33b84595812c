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


# ------------------------------------------------------------------------------------------------ byte ranges


def test_byte_ranges_come_through_the_cdn_redirect_as_huggingface_hub_reads_them(fake_hub):
    """HfFileSystem reads a file by ranges through `resolve/` and the 302 to the storage host (206 there);
    a bounded range, an open one, a suffix and one past the end (416) answer as the live storage does."""
    from huggingface_hub import HfFileSystem, constants, hf_hub_url
    from huggingface_hub.utils import get_session

    data = bytes(range(256)) * 64
    fake_hub.repos["org/x"] = Repo({"x.gguf": data, "config.json": b'{"a": 1}'})
    with HfFileSystem().open("org/x/x.gguf", "rb", block_size=1024) as f:
        f.seek(5000)
        assert f.read(100) == data[5000:5100]
    assert all(p == "x.gguf" for p, _ in fake_hub.range_reads()) and fake_hub.downloads() == []

    url = hf_hub_url("org/x", "x.gguf")
    for asked, status, content_range, body in (
        ("bytes=10-19", 206, f"bytes 10-19/{len(data)}", data[10:20]),
        ("bytes=16380-", 206, f"bytes 16380-16383/{len(data)}", data[16380:]),
        ("bytes=-4", 206, f"bytes 16380-16383/{len(data)}", data[-4:]),
        ("bytes=0-99999", 206, f"bytes 0-16383/{len(data)}", data),
        (f"bytes={len(data)}-", 416, f"bytes */{len(data)}", b""),
        ("bytes=0-1,5-6", 200, None, data),  # several ranges: the whole file, as servers may answer
    ):
        r = get_session().get(url, headers={"Range": asked}, follow_redirects=True)
        assert (r.status_code, r.headers.get("Content-Range"), r.content) == (status, content_range, body), asked
        assert str(r.url).startswith(fake_hub.urls["storage"])
    head = get_session().head(url, follow_redirects=True)
    assert head.status_code == 200 and int(head.headers["Content-Length"]) == len(data) and head.content == b""
    small = get_session().get(hf_hub_url("org/x", "config.json"), headers={"Range": "bytes=1-3"})  # a git blob, in place
    assert (small.status_code, small.headers["Content-Range"], small.content) == (206, "bytes 1-3/8", b'"a"')
    assert str(small.url).startswith(constants.ENDPOINT)


def test_modelscope_lfs_files_redirect_to_oss_which_answers_ranges(fake_modelscope, monkeypatch, tmp_path):
    """modelscope_hub downloads a large file in parallel byte ranges, each of which must come back exactly as
    asked; small git files come in place and whole, whatever Range asks."""
    import modelscope_hub as ms
    from modelscope_hub import _download

    big = bytes(range(256)) * (4 << 10)  # 1 MiB
    fake_modelscope.repos["org/x"] = Repo({"x.gguf": big, "config.json": b'{"a": 1}'})
    monkeypatch.setattr(_download, "DOWNLOAD_PARALLEL_THRESHOLD", 64 << 10)
    monkeypatch.setattr(_download, "DOWNLOAD_PARALLELS", 4)
    monkeypatch.setattr(_download, "DOWNLOAD_PART_SIZE", 256 << 10)
    folder = ms.HubApi().download_repo("org/x", "model", local_dir=str(tmp_path / "x"))
    assert (tmp_path / "x" / "x.gguf").read_bytes() == big and str(folder) == str(tmp_path / "x")
    reads = fake_modelscope.range_reads()
    assert len(reads) > 1 and all(p == "x.gguf" for p, _ in reads)  # parallel parts, no fallback to one stream

    api = ms.HubApi().legacy
    r = api.download_stream("org/x", "model", "x.gguf", "master", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == big[100:200] and r.url.startswith(fake_modelscope.urls["storage"])
    r = api.download_stream("org/x", "model", "config.json", "master", headers={"Range": "bytes=2-4"})
    assert r.status_code == 200 and r.content == b'{"a": 1}' and "Content-Range" not in r.headers
