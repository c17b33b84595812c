"""edgellm.hub (download, model) and `edgellm pull`: the hubs' real libraries against their real cache layouts.

Downloads run huggingface_hub's and modelscope_hub's own code against hubs on localhost
(tests/hubserver.py), which fill the caches the way the libraries do; offline runs then read those
caches. One ModelScope cache is also laid out by hand, as modelscope_hub lays it out, and checked with
modelscope_hub's own cache scanner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hubtesting import (  # noqa: F401  (fixtures)
    LEVELS_LISTED,
    NEEDED,
    Repo,
    caches,
    checkpoint_files,
    edgellm_cli,
    fake_hub,
    fake_modelscope,
    files_under,
    go_offline,
    gguf_repo,
    levels_repo,
    machine_with_ram,
    planned_levels_repo,
    ram_for_budget,
    ram_needed,
    safetensors_bytes,
    smollm2_levels,
)
from hubserver import closed_port

import fixtures
from conftest import run_cli
from edgellm.hub import download as hub, model as hubmodel
from edgellm.errors import EdgeError, NotEnoughSpace, UsageError
from edgellm.fsutil import human_bytes
from edgellm.formats.gguf_info import read_gguf
from edgellm.store.store import snapshot_name


# --------------------------------------------------------------------------------------------- choosing files


def listing(*paths, size=10):
    return [hub.RemoteFile(p, size, False) for p in paths]


def test_select_files_takes_what_conversion_needs_from_a_llama3_repo():
    # The file list of meta-llama/Meta-Llama-3-8B-Instruct.
    repo = listing(
        ".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "config.json", "generation_config.json",
        *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)), "model.safetensors.index.json",
        "original/consolidated.00.pth", "original/params.json", "original/tokenizer.model",
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json",
    )  # fmt: skip
    sel = hub.select_files(repo)
    assert sel.kind == "checkpoint"
    assert set(sel.names) == {
        "config.json", "generation_config.json", "model.safetensors.index.json", "special_tokens_map.json",
        "tokenizer.json", "tokenizer_config.json", *(f"model-0000{i}-of-00004.safetensors" for i in range(1, 5)),
    }  # fmt: skip
    assert sum(f.size for f in sel.files) == 10 * len(sel.names)


def test_select_files_skips_mistral_consolidated_weights_and_pytorch_bins():
    repo = listing(
        "consolidated.safetensors", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
        "model.safetensors.index.json", "pytorch_model.bin", "params.json", "tokenizer.model", "config.json",
    )  # fmt: skip
    names = set(hub.select_files(repo).names)
    assert "consolidated.safetensors" not in names and "pytorch_model.bin" not in names
    assert {"model-00001-of-00002.safetensors", "tokenizer.model", "config.json"} <= names


def test_levels_are_for_gguf_repos():
    with pytest.raises(UsageError, match=r"holds a checkpoint, not GGUF files: choose levels when packaging it"):
        hub.select_files(listing("config.json", "model.safetensors"), ["Q4_K_M"])


def test_select_files_refuses_a_repo_of_pickles_only():
    with pytest.raises(EdgeError, match=r"neither \.safetensors nor \.gguf .*\.bin"):
        hub.select_files(listing("config.json", "pytorch_model.bin"))


def test_select_files_picks_gguf_levels():
    repo = listing(
        "Llama-3.2-1B-Instruct-Q4_K_M.gguf", "Llama-3.2-1B-Instruct-Q8_0.gguf", "Llama-3.2-1B-Instruct-IQ4_XS.gguf",
        "Llama-3.2-1B-Instruct-f16.gguf", "README.md", "mmproj-Llama-3.2-1B-f16.gguf",
    )  # fmt: skip
    assert hub.select_files(repo).kind == "gguf"
    assert len(hub.select_files(repo).names) == 6  # four levels, the model card and the vision projector
    assert hub.select_files(repo, ["q4_k_m", "IQ4_XS"]).names == [
        "Llama-3.2-1B-Instruct-IQ4_XS.gguf",
        "Llama-3.2-1B-Instruct-Q4_K_M.gguf",
        "README.md",
        "mmproj-Llama-3.2-1B-f16.gguf",  # every level needs it for images
    ]
    # of several projectors, the F16 one (llama.cpp's default)
    several = listing("X-Q8_0.gguf", "mmproj-X-Q8_0.gguf", "mmproj-X-BF16.gguf", "mmproj-X-F16.gguf")
    assert [n for n in hub.select_files(several).names if n.startswith("mmproj")] == ["mmproj-X-F16.gguf"]
    with pytest.raises(UsageError, match=r"no GGUF file at level Q2_K \(levels there: F16, IQ4_XS, Q4_K_M, Q8_0\)"):
        hub.select_files(repo, ["Q2_K"])


@pytest.mark.parametrize(
    "name, level",
    [
        ("Meta-Llama-3-8B-Instruct-Q4_K_M.gguf", "Q4_K_M"),
        ("qwen2-7b-instruct-q5_k_m.gguf", "Q5_K_M"),
        ("Llama-3.3-70B-Instruct-Q8_0/Llama-3.3-70B-Instruct-Q8_0-00001-of-00002.gguf", "Q8_0"),
        ("SmolLM2-135M-Instruct.Q4_1.gguf", "Q4_1"),
        ("model-bf16.gguf", "BF16"),
        ("mmproj.gguf", None),
    ],
)
def test_gguf_level_follows_the_hubs_naming(name, level):
    assert hub.gguf_level(name) == level


def test_gguf_levels_group_split_files_and_leave_out_projectors_and_imatrices():
    repo = listing(
        "X-Q8_0.gguf", "Q6_K/X-Q6_K-00001-of-00002.gguf", "Q6_K/X-Q6_K-00002-of-00002.gguf", "mmproj-X-f16.gguf",
        "imatrix.gguf", "model.gguf", "README.md",
    )  # fmt: skip
    levels = hub.gguf_levels(repo)
    assert sorted(levels) == ["Q6_K", "Q8_0", "model"]  # a file without a level is a level of its own
    assert [f.path for f in levels["Q6_K"]] == ["Q6_K/X-Q6_K-00001-of-00002.gguf", "Q6_K/X-Q6_K-00002-of-00002.gguf"]
    assert hub.select_files(repo, ["q6_k"]).names == [*(f.path for f in levels["Q6_K"]), "README.md", "mmproj-X-f16.gguf"]


# ----------------------------------------------------------------------------------------------- which hub


@pytest.mark.parametrize(
    "ref, repo_id, named",
    [
        ("meta-llama/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct", None),
        ("hf:Qwen/Qwen2-7B", "Qwen/Qwen2-7B", "hf"),
        ("https://huggingface.co/Qwen/Qwen2-7B/tree/main", "Qwen/Qwen2-7B", "hf"),
        ("ms:Qwen/Qwen2-7B", "Qwen/Qwen2-7B", "modelscope"),
        ("https://modelscope.cn/models/LLM-Research/Meta-Llama-3-8B-Instruct", "LLM-Research/Meta-Llama-3-8B-Instruct", "modelscope"),
    ],
)  # fmt: skip
def test_parse_repo_id(ref, repo_id, named):
    assert hub.parse_repo_id(ref) == (repo_id, named)


@pytest.mark.parametrize("bad", ["llama", "a/b/c", "../x", "/abs/path", "org/"])
def test_parse_repo_id_rejects_what_is_not_an_id(bad):
    with pytest.raises(UsageError, match="not a hub repo id"):
        hub.parse_repo_id(bad)


def test_auto_hub_choice_and_why(caches, monkeypatch):
    assert hub.choose_hub("meta-llama/Meta-Llama-3-8B-Instruct") == ("hf", "default")
    assert hub.choose_hub("LLM-Research/Meta-Llama-3-8B-Instruct") == (
        "modelscope",
        "LLM-Research publishes on ModelScope",
    )
    assert hub.choose_hub("LLM-Research/x", hub="hf") == ("hf", "--hub")
    assert hub.choose_hub("org/x", named="modelscope") == ("modelscope", "named in the id")
    monkeypatch.setenv("EDGELLM_HUB", "modelscope")
    assert hub.choose_hub("Qwen/Qwen2-7B") == ("modelscope", "EDGELLM_HUB")
    monkeypatch.delenv("EDGELLM_HUB")
    ms_snapshot(caches["modelscope"], "Qwen/Qwen2-7B", {"config.json": b"{}"})
    assert hub.choose_hub("Qwen/Qwen2-7B") == ("modelscope", "cached from ModelScope")
    with pytest.raises(UsageError, match="unknown hub"):
        hub.choose_hub("a/b", hub="github")


# ------------------------------------------------------------------------------------ Hugging Face downloads


def test_pull_fetches_only_what_conversion_needs_then_serves_the_cache_offline(fake_hub, caches, monkeypatch, capsys):
    from huggingface_hub import scan_cache_dir

    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    said = []
    pulled = hub.fetch("org/tiny-llama", say=said.append)
    # The weights are on Xet, whose storage cannot be reached: one line, then plain HTTPS.
    assert said[0] == "org/tiny-llama: Hugging Face (default)" and len(said) == 2
    assert said[1].startswith("Hugging Face: Xet storage failed for org/tiny-llama (CAS Client Error: ")
    assert said[1].endswith("); retrying over plain HTTPS…")
    assert fake_hub.xet_requests()  # Xet was tried first, as huggingface_hub does live
    assert pulled.kind == "checkpoint" and set(pulled.files) == NEEDED and not pulled.offline
    assert files_under(pulled.path) == NEEDED
    assert {path for path, _ in fake_hub.downloads()} == NEEDED  # no .bin, .pth, original/, README
    assert pulled.downloaded == sum(len(checkpoint_files()[n]) for n in NEEDED)
    # The library's own cache scanner sees one complete repo where huggingface_hub keeps it.
    (cached,) = scan_cache_dir(caches["hf"]).repos
    assert cached.repo_id == "org/tiny-llama" and cached.nb_files == len(NEEDED)

    # A second pull online downloads nothing.
    fake_hub.forget()
    assert hub.fetch("org/tiny-llama").downloaded == 0 and fake_hub.downloads() == []

    # Offline: the cache answers, no request is made.
    go_offline(monkeypatch)
    fake_hub.forget()
    code, out, err = run_cli(capsys, "pull", "org/tiny-llama")
    assert code == 0 and out.strip() == str(pulled.path), err
    assert "offline" in err and "from the cache" in err and "next: edgellm package org/tiny-llama" in err
    assert fake_hub.log == []


def test_pull_json_and_package_source(fake_hub, tmp_path, capsys):
    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    code, out, _ = run_cli(capsys, "pull", "hf:org/tiny-llama", "--json")
    assert code == 0
    result = json.loads(out)
    assert result["hub"] == "hf" and result["hub_reason"] == "named in the id"
    assert result["kind"] == "checkpoint" and set(result["files"]) == NEEDED and result["store_name"] is None
    assert result["level_chosen"] is None
    assert hub.package_source("org/tiny-llama", None) == hub.PackageSource(Path(result["path"]), "tiny-llama")
    assert hub.package_source(str(tmp_path), None).path == tmp_path  # a local folder stays as it is
    with pytest.raises(UsageError, match="no such file or folder, and not a hub repo id: nowhere"):
        hub.package_source("nowhere", None)


def test_interrupted_download_keeps_finished_files_and_resumes_on_rerun(fake_hub, caches, capsys):
    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files(sharded=True))
    shard = "model-00002-of-00002.safetensors"
    fake_hub.cut[shard] = 100  # the connection drops after 100 bytes ...
    fake_hub.failing.add(shard)  # ... and the hub stays unwell for that file
    code, out, err = run_cli(capsys, "pull", "org/tiny-llama")
    assert code == 1 and out == ""
    assert err.strip().splitlines()[-1] == (
        "edgellm: Hugging Face answered 503 for org/tiny-llama; "
        "run the same command again to resume (finished files are kept)"
    )

    # Offline meanwhile: the cached copy is known to be incomplete.
    fake_hub.failing.clear()
    fake_hub.forget()
    code, out, err = run_cli(capsys, "pull", "org/tiny-llama", "--offline")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "edgellm: offline and the cached copy of org/tiny-llama is incomplete "
        "(missing model-00002-of-00002.safetensors); run again online to resume the download"
    )

    code, out, err = run_cli(capsys, "pull", "org/tiny-llama")
    assert code == 0
    assert [path for path, _ in fake_hub.downloads()] == [shard]  # finished files were kept
    assert files_under(Path(out.strip())) >= {shard, "model-00001-of-00002.safetensors", "config.json"}


def test_a_pulled_sharded_checkpoint_converts_like_its_source(fake_hub, tmp_path):
    """End to end: a Qwen2 checkpoint in four shards, pulled, then converted by edgellm's converter."""
    from edgellm.quantize.convert import convert_checkpoint

    source = fixtures.qwen2_checkpoint()
    files = {p.name: p.read_bytes() for p in source.iterdir() if p.is_file()}
    fake_hub.repos["Qwen/tiny-qwen2"] = Repo(files | {"pytorch_model.bin": b"pickle", "original/x.pth": b"pth"})
    pulled = hub.fetch("Qwen/tiny-qwen2")
    assert files_under(pulled.path) == set(files)
    ours = convert_checkpoint(pulled.path, tmp_path / "pulled.gguf", "f16", progress=False)
    theirs = convert_checkpoint(source, tmp_path / "source.gguf", "f16", progress=False)
    a, b = read_gguf(ours), read_gguf(theirs)
    differ = {k for k in a.metadata.keys() | b.metadata.keys() if a.metadata.get(k) != b.metadata.get(k)}
    assert differ == {"general.name"}, differ  # named after the folder: a snapshot's is a commit hash
    assert snapshot_name(pulled.path) == "tiny-qwen2" and snapshot_name(source) is None
    assert a.tensors == b.tensors
    tensor_bytes = sum(t.n_bytes for t in a.tensors)
    assert ours.read_bytes()[-tensor_bytes:] == theirs.read_bytes()[-tensor_bytes:]


def test_package_takes_a_hub_repo_id(fake_hub, tmp_path, capsys):
    files = {p.name: p.read_bytes() for p in fixtures.qwen2_checkpoint().iterdir() if p.is_file()}
    fake_hub.repos["Qwen/tiny-qwen2"] = Repo(files)
    code, out, err = run_cli(capsys, "package", "Qwen/tiny-qwen2", "-o", str(tmp_path / "pkg"), "--levels", "Q8_0", "--json")
    assert code == 0, err
    assert "Qwen/tiny-qwen2: Hugging Face (default)" in err
    manifest = json.loads(out)
    names = [f["file"] for f in manifest["files"]]
    assert "tiny-qwen2-Q8_0.gguf" in names and all(n.startswith("tiny-qwen2-") for n in names)  # not a commit
    assert (tmp_path / "pkg" / "tiny-qwen2-Q8_0.gguf").is_file()


def test_a_cut_transfer_resumes_by_byte_range(fake_hub):
    files = checkpoint_files()
    files["model.safetensors"] = safetensors_bytes(0, shape=(2048, 2048))  # 16 MiB: more than one 10 MiB chunk
    fake_hub.repos["org/tiny-llama"] = Repo(files)
    fake_hub.cut["model.safetensors"] = 12 << 20
    pulled = hub.fetch("org/tiny-llama")
    assert ("model.safetensors", f"bytes={10 << 20}-") in fake_hub.downloads()  # the received chunk is kept
    assert (pulled.path / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_verify_finds_a_damaged_file(fake_hub, caches, capsys):
    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    code, out, err = run_cli(capsys, "pull", "org/tiny-llama", "--verify")
    assert code == 0, err
    blob = (Path(out.strip()) / "config.json").resolve()
    blob.chmod(0o644)
    blob.write_bytes(blob.read_bytes().replace(b"llama", b"LLAMA"))  # same size, other bytes
    code, _, err = run_cli(capsys, "pull", "org/tiny-llama", "--verify")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: org/tiny-llama: checksum mismatch in config.json; remove the repo from the cache "
        "(hf cache rm model/org/tiny-llama) and pull again"
    )
    code, _, err = run_cli(capsys, "pull", "org/tiny-llama", "--verify", "--offline")
    assert code == 2 and "not possible offline" in err


def test_disk_too_small_is_refused_before_downloading(fake_hub, caches, capsys):
    repo = Repo(checkpoint_files())
    repo.listed_sizes["model.safetensors"] = 100 << 40  # the hub says 100 TiB
    fake_hub.repos["org/huge"] = repo
    code, out, err = run_cli(capsys, "pull", "org/huge")
    assert code == NotEnoughSpace.exit_code
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"edgellm: not enough disk space in {caches['hf']} for the download of org/huge: needs 100.00 TiB")
    assert fake_hub.downloads() == []


def test_repo_not_found(fake_hub, capsys):
    code, _, err = run_cli(capsys, "pull", "org/missing")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "edgellm: no repo org/missing on Hugging Face (if it is private, log in: `hf auth login` or HF_TOKEN)"
    )


def test_private_repo_without_login(fake_hub, capsys):
    fake_hub.repos["org/private"] = Repo(checkpoint_files(), private=True)
    code, _, err = run_cli(capsys, "pull", "org/private")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: no repo org/private on Hugging Face (if it is private, log in: `hf auth login` or HF_TOKEN)"
    )


def test_gated_repo_says_accept_the_licence_and_log_in(fake_hub, capsys):
    fake_hub.repos["meta-llama/Meta-Llama-3-8B-Instruct"] = Repo(checkpoint_files(), gated=True)
    code, _, err = run_cli(capsys, "pull", "meta-llama/Meta-Llama-3-8B-Instruct")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "edgellm: meta-llama/Meta-Llama-3-8B-Instruct is gated on Hugging Face: accept its licence at "
        "https://huggingface.co/meta-llama/Meta-Llama-3-8B-Instruct and log in (`hf auth login` or HF_TOKEN)"
    )


def test_unreachable_hub_falls_back_to_the_cache(fake_hub, monkeypatch):
    from huggingface_hub import constants

    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    first = hub.fetch("org/tiny-llama")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    again = hub.fetch("org/tiny-llama", hub="hf")
    assert again.offline and again.path == first.path and set(again.files) == NEEDED
    with pytest.raises(EdgeError, match="^cannot reach Hugging Face and org/other is not in the Hugging Face cache"):
        hub.fetch("org/other", hub="hf")


def test_offline_with_nothing_cached_says_what_is_cached(fake_hub, caches, monkeypatch, capsys):
    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    hub.fetch("org/tiny-llama")
    go_offline(monkeypatch)
    code, _, err = run_cli(capsys, "pull", "meta-llama/Llama-3.2-1B-Instruct")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        "edgellm: offline and meta-llama/Llama-3.2-1B-Instruct is not in the Hugging Face cache "
        f"({caches['hf']}); cached there: org/tiny-llama"
    )


def test_offline_cache_without_weights_is_reported(fake_hub, monkeypatch):
    files = checkpoint_files()
    files.pop("model.safetensors")  # an old repo: pickles only
    fake_hub.repos["org/old"] = Repo(files)
    with pytest.raises(EdgeError, match=r"^org/old on Hugging Face holds neither \.safetensors nor \.gguf"):
        hub.fetch("org/old")


# ------------------------------------------------------------------------------------------------ ModelScope


def ms_snapshot(cache, repo_id, files, revision="master"):
    """A repo as modelscope_hub caches it: <cache>/models/<owner>--<name>/snapshots/<revision>/<files>."""
    folder = cache / "models" / repo_id.replace("/", "--") / "snapshots" / revision
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def test_modelscope_cache_offline(caches, capsys):
    from modelscope_hub import HubApi

    repo_id = "LLM-Research/Meta-Llama-3-8B-Instruct"
    folder = ms_snapshot(caches["modelscope"], repo_id, checkpoint_files())
    assert [r.repo_id for r in HubApi().scan_cache().repos] == [repo_id]  # the layout modelscope_hub reads

    code, out, err = run_cli(capsys, "pull", repo_id)
    assert code == 0 and out.strip() == str(folder)
    assert err.splitlines()[0] == f"{repo_id}: ModelScope (LLM-Research publishes on ModelScope), offline"
    pulled = hub.fetch(repo_id)
    assert pulled.hub == "modelscope" and set(pulled.files) == NEEDED  # .bin / original/ left out

    code, _, err = run_cli(capsys, "pull", "ms:LLM-Research/Llama-3.2-1B")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"edgellm: offline and LLM-Research/Llama-3.2-1B is not in the ModelScope cache ({caches['modelscope']}); "
        f"cached there: {repo_id}"
    )


def test_modelscope_incomplete_sharded_cache(caches):
    files = checkpoint_files(sharded=True)
    files.pop("model-00002-of-00002.safetensors")
    ms_snapshot(caches["modelscope"], "LLM-Research/tiny", files)
    with pytest.raises(EdgeError, match=r"^offline and the cached copy of LLM-Research/tiny is incomplete \(missing model-00002-of-00002\.safetensors\)$"):
        hub.fetch("LLM-Research/tiny")


def test_modelscope_download_then_offline(fake_modelscope, caches, monkeypatch, capsys):
    from modelscope_hub import HubApi

    repo_id = "LLM-Research/tiny-llama"
    fake_modelscope.repos[repo_id] = Repo(checkpoint_files())
    code, out, err = run_cli(capsys, "pull", repo_id)
    assert code == 0, err
    folder = Path(out.strip())
    assert folder == caches["modelscope"] / "models" / "LLM-Research--tiny-llama" / "snapshots" / "master"
    assert files_under(folder) == NEEDED and set(fake_modelscope.modelscope_downloads()) == NEEDED
    assert [r.repo_id for r in HubApi().scan_cache().repos] == [repo_id]

    fake_modelscope.forget()
    assert hub.fetch(repo_id).downloaded == 0 and fake_modelscope.modelscope_downloads() == []
    go_offline(monkeypatch)
    fake_modelscope.forget()
    assert hub.fetch(repo_id).path == folder and fake_modelscope.log == []


def test_modelscope_snapshot_name(caches):
    folder = ms_snapshot(caches["modelscope"], "LLM-Research/Meta-Llama-3.1-8B-Instruct", {"config.json": b"{}"})
    assert snapshot_name(folder) == "Meta-Llama-3.1-8B-Instruct"


def test_modelscope_replaces_a_damaged_file_and_verifies(fake_modelscope, capsys):
    fake_modelscope.repos["LLM-Research/tiny"] = Repo(checkpoint_files())
    folder = hub.fetch("LLM-Research/tiny").path
    (folder / "config.json").write_bytes((folder / "config.json").read_bytes().replace(b"llama", b"LLAMA"))
    fake_modelscope.forget()
    code, _, err = run_cli(capsys, "pull", "LLM-Research/tiny", "--verify")
    assert code == 0, err
    assert fake_modelscope.modelscope_downloads() == ["config.json"]  # modelscope_hub hashes what it reuses
    assert (folder / "config.json").read_bytes() == checkpoint_files()["config.json"]


def test_modelscope_interrupted_download_resumes_on_rerun(fake_modelscope, monkeypatch, capsys):
    import modelscope_hub._download

    # As MODELSCOPE_DOWNLOAD_MAX_RETRIES=0 would (the library reads it at import): fail at once.
    monkeypatch.setattr(modelscope_hub._download, "DOWNLOAD_RETRY_TIMES", 0)
    shard = "model-00002-of-00002.safetensors"
    fake_modelscope.repos["LLM-Research/tiny"] = Repo(checkpoint_files(sharded=True))
    fake_modelscope.failing.add(shard)
    code, _, err = run_cli(capsys, "pull", "LLM-Research/tiny")
    assert code == 1
    assert err.strip().splitlines()[-1] == (
        f"edgellm: download of LLM-Research/tiny interrupted ({shard} failed); "
        "run the same command again to resume (finished files are kept)"
    )
    fake_modelscope.failing.clear()
    fake_modelscope.forget()
    code, _, err = run_cli(capsys, "pull", "LLM-Research/tiny")
    assert code == 0 and fake_modelscope.modelscope_downloads() == [shard]


def test_modelscope_errors_from_the_hub(fake_modelscope, capsys):
    fake_modelscope.repos["LLM-Research/gated"] = Repo(checkpoint_files(), gated=True)
    code, _, err = run_cli(capsys, "pull", "LLM-Research/missing")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: no repo LLM-Research/missing on ModelScope (if it is private, log in: `ms login` or MODELSCOPE_API_TOKEN)"
    )
    code, _, err = run_cli(capsys, "pull", "LLM-Research/gated")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: LLM-Research/gated on ModelScope needs access: accept its licence at "
        "https://modelscope.cn/models/LLM-Research/gated and log in (`ms login` or MODELSCOPE_API_TOKEN)"
    )
    # ModelScope answers 404 for a private repo too, with the code of a missing one.
    fake_modelscope.repos["LLM-Research/private"] = Repo(checkpoint_files(), private=True)
    code, _, err = run_cli(capsys, "pull", "LLM-Research/private")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: no repo LLM-Research/private on ModelScope (if it is private, log in: `ms login` or MODELSCOPE_API_TOKEN)"
    )

    big = Repo(checkpoint_files())
    big.listed_sizes["model.safetensors"] = 100 << 40
    fake_modelscope.repos["LLM-Research/huge"] = big
    code, _, err = run_cli(capsys, "pull", "LLM-Research/huge")
    assert code == NotEnoughSpace.exit_code and "needs 100.00 TiB" in err
    assert fake_modelscope.modelscope_downloads() == []


def test_pull_help_and_bad_hub(capsys):
    code, out, _ = run_cli(capsys, "pull", "--help")
    text = " ".join(out.split())
    assert code == 0 and "--hub [auto|hf|modelscope]" in text and "(never .bin, .pth or original/)" in text
    code, _, err = run_cli(capsys, "pull", "org/x", "--hub", "github")
    assert code == 2 and "github" in err


def test_no_partial_store_entry_for_checkpoints(fake_hub):
    from edgellm import paths

    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    hubmodel.pull("org/tiny-llama")
    assert not paths.store_dir().exists() or not any(paths.store_dir().iterdir())


# ---------------------------------------------------------------------------- Xet storage, as on the live Hub


def test_xet_storage_out_of_reach_is_one_status_line_then_plain_https(fake_hub):
    """Live, hf_xet fetches weights from a CAS server of its own; where it cannot be reached the installed
    command used to die with a 70-line RuntimeError traceback (CAS Client Error)."""
    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = gguf_repo()
    r = edgellm_cli("pull", "someone/SmolLM2-135M-Instruct-GGUF", "--level", "Q4_1", endpoint=fake_hub.urls["hub"])
    assert r.returncode == 0, r.stderr
    assert r.stderr.splitlines() == [
        "someone/SmolLM2-135M-Instruct-GGUF: Hugging Face (default)",
        "Hugging Face: Xet storage failed for someone/SmolLM2-135M-Instruct-GGUF (CAS Client Error: Request "
        f"middleware error: error sending request for url {fake_hub.urls['cas']}); retrying over plain HTTPS…",
        f"2 files, {human_bytes(sum(len(d) for d in gguf_repo().files.values()))} downloaded",
        "registered as SmolLM2-135M-Instruct: edgellm chat SmolLM2-135M-Instruct",
    ]
    assert fake_hub.xet_requests() and ("SmolLM2-135M-Instruct-Q4_1.gguf", None) in fake_hub.downloads()


def test_xet_then_plain_https_failing_ends_in_one_error_line(fake_hub):
    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = gguf_repo()
    fake_hub.failing.add("SmolLM2-135M-Instruct-Q4_1.gguf")
    r = edgellm_cli("pull", "someone/SmolLM2-135M-Instruct-GGUF", "--level", "Q4_1", endpoint=fake_hub.urls["hub"])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert lines[-1] == (
        "edgellm: Hugging Face answered 503 for someone/SmolLM2-135M-Instruct-GGUF; "
        "run the same command again to resume (finished files are kept)"
    )
    assert len(lines) <= 4, lines  # the hub line, Xet's line, at most one retry line, the error


def test_without_xet_lfs_files_come_from_the_storage_host(fake_hub, capsys):
    """Repos whose files are plain LFS: `resolve/` redirects to the storage host and nothing says Xet."""
    fake_hub.xet = False
    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    code, out, err = run_cli(capsys, "pull", "org/tiny-llama")
    assert code == 0 and "Xet" not in err and fake_hub.xet_requests() == []
    assert files_under(Path(out.strip())) == NEEDED


# -------------------------------------------------------------------------------------------------- revisions


def test_revisions_resolve_as_on_the_hub(fake_hub, capsys):
    repo = Repo(checkpoint_files(), refs={"v1.0", "refs/pr/1"})
    fake_hub.repos["org/tiny-llama"] = repo
    for rev in ("v1.0", "refs/pr/1", repo.sha):  # a tag, a pull request's ref (sent URL-quoted), a commit
        code, out, err = run_cli(capsys, "pull", "org/tiny-llama", "--revision", rev)
        assert code == 0, (rev, err)
        assert Path(out.strip()).name == repo.sha
    for rev in ("v2.0", "refs/pr/2", "master"):
        code, _, err = run_cli(capsys, "pull", "org/tiny-llama", "--revision", rev)
        assert code == 1 and err.strip().splitlines()[-1] == (
            f"edgellm: org/tiny-llama on Hugging Face has no revision {rev} (a branch, tag, commit or refs/pr/N)"
        )


def test_modelscope_revisions(fake_modelscope, caches, capsys):
    fake_modelscope.repos["LLM-Research/tiny"] = Repo(checkpoint_files(), refs={"v1.0.0"})
    code, out, err = run_cli(capsys, "pull", "LLM-Research/tiny", "--revision", "v1.0.0")
    assert code == 0, err
    assert Path(out.strip()) == caches["modelscope"] / "models" / "LLM-Research--tiny" / "snapshots" / "v1.0.0"
    code, _, err = run_cli(capsys, "pull", "LLM-Research/tiny", "--revision", "v9")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: LLM-Research/tiny on ModelScope has no revision v9 (a branch, tag or commit)"
    )


def test_modelscope_refused_token(fake_modelscope, monkeypatch, capsys):
    import modelscope_hub

    fake_modelscope.repos["LLM-Research/tiny"] = Repo(checkpoint_files())
    monkeypatch.setenv("MODELSCOPE_API_TOKEN", "ms-expired")
    modelscope_hub.set_default_config(None)
    code, _, err = run_cli(capsys, "pull", "LLM-Research/tiny")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: ModelScope refused the login for LLM-Research/tiny: log in again (`ms login` or MODELSCOPE_API_TOKEN)"
    )


def test_modelscope_out_of_reach_is_one_status_line(caches):
    """modelscope_hub logs each retry as a timestamped WARNING record; the command shows one line."""
    dead = closed_port()
    try:
        r = edgellm_cli("pull", "ms:LLM-Research/tiny", modelscope=f"http://127.0.0.1:{dead.getsockname()[1]}",
                        MODELSCOPE_REPO_TREE_PAGE_MAX_ATTEMPTS="2")  # fmt: skip  (live: 4 tries, 7 s)
    finally:
        dead.close()
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        "LLM-Research/tiny: ModelScope (named in the id)",
        "ModelScope: NetworkError; retrying…",
        f"edgellm: cannot reach ModelScope and LLM-Research/tiny is not in the ModelScope cache "
        f"({caches['modelscope']}); nothing else is cached there",
    ]


def test_modelscope_forget_command_removes_that_repo_only(fake_modelscope, caches, capsys):
    """The command rm suggests for a ModelScope entry is modelscope_hub's own, naming the repo."""
    fake_modelscope.repos["LLM-Research/SmolLM2-GGUF"] = gguf_repo()
    fake_modelscope.repos["LLM-Research/tiny"] = Repo(checkpoint_files())
    assert run_cli(capsys, "pull", "LLM-Research/SmolLM2-GGUF", "--level", "Q4_1")[0] == 0
    assert run_cli(capsys, "pull", "LLM-Research/tiny")[0] == 0
    code, out, _ = run_cli(capsys, "rm", "SmolLM2")
    how = "ms cache clear --repo-type model --repo-id LLM-Research/SmolLM2-GGUF"
    assert code == 0 and out.strip().endswith(f"stay in the ModelScope cache ({how})")
    ms = Path(sys.executable).parent / "ms"
    subprocess.run([str(ms), *how.split()[1:], "--yes"], check=True, capture_output=True)
    assert sorted(os.listdir(caches["modelscope"] / "models")) == ["LLM-Research--tiny"]


# ------------------------------------------------------------------------------------------ GGUF repos: levels


def test_pull_of_a_gguf_repo_fetches_the_level_the_planner_picks(fake_hub, monkeypatch, capsys):
    """The levels' headers are read by byte ranges (largest first), the planner judges them, and only the
    level it picks is downloaded."""
    levels = smollm2_levels()
    machine_with_ram(monkeypatch, ram_for_budget(ram_needed(levels["Q4_1"])))  # Q4_1 fits at 2048 tokens, Q8_0 not
    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = planned_levels_repo()
    code, out, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["level_chosen"] == "Q4_1" and "the planner's choice here, the highest-quality level that fits" in result["level_reason"]
    assert result["files"] == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf", "mmproj-SmolLM2-f16.gguf"]
    assert sorted(p for p, _ in fake_hub.downloads()) == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf", "mmproj-SmolLM2-f16.gguf"]
    # Q8_0 was read and judged too big, Q4_1 read and chosen; F16 (a base) and the smaller Q2_K were never read.
    assert {p for p, _ in fake_hub.range_reads()} == {"SmolLM2-135M-Instruct-Q8_0.gguf", "SmolLM2-135M-Instruct-Q4_1.gguf"}
    code, _, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF")
    size = human_bytes(fixtures.smollm2_gguf().stat().st_size)
    assert code == 0 and f"someone/SmolLM2-135M-Instruct-GGUF: Q4_1 ({size}): the planner's choice here, the highest" in err

    machine_with_ram(monkeypatch, 560)  # 20 MiB usable: smaller than every level, so no header is read
    fake_hub.forget()
    code, _, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF")
    assert code == NotEnoughSpace.exit_code and err.strip().splitlines()[-1] == (
        "edgellm: someone/SmolLM2-135M-Instruct-GGUF on Hugging Face has no level that fits this machine: its smallest "
        f"level Q2_K is {human_bytes(levels['Q2_K'].stat().st_size)}, and there is 20.00 MiB of RAM usable here; "
        "name one with --level (or take every one with --all)"
    )
    assert fake_hub.downloads() == [] and fake_hub.range_reads() == []


def test_pull_level_and_all(fake_hub, capsys):
    from edgellm.store import store

    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = levels_repo()
    code, _, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--level", "Q6_K")
    assert code == 0, err
    assert sorted(p for p, _ in fake_hub.downloads()) == [
        "Q6_K/SmolLM2-135M-Instruct-Q6_K-00001-of-00002.gguf", "Q6_K/SmolLM2-135M-Instruct-Q6_K-00002-of-00002.gguf",
        "README.md", "mmproj-SmolLM2-f16.gguf",
    ]  # fmt: skip
    # A level pulled later joins the entry; the earlier one stays.
    assert run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--level", "Q4_1")[0] == 0
    entry = store.resolve("SmolLM2-135M-Instruct")
    assert sorted(p.name for p in entry.glob("*.gguf")) == [
        "SmolLM2-135M-Instruct-Q4_1.gguf", "SmolLM2-135M-Instruct-Q6_K-00001-of-00002.gguf",
        "SmolLM2-135M-Instruct-Q6_K-00002-of-00002.gguf", "mmproj-SmolLM2-f16.gguf",
    ]  # fmt: skip
    from edgellm.store.models import resolve_model

    assert resolve_model(entry).projector == entry / "mmproj-SmolLM2-f16.gguf"  # the entry carries its projector
    fake_hub.forget()
    code, _, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--all")
    assert code == 0, err
    assert {p for p, _ in fake_hub.downloads()} == set(LEVELS_LISTED) - {
        "mmproj-SmolLM2-f16.gguf", "Q6_K/SmolLM2-135M-Instruct-Q6_K-00001-of-00002.gguf",
        "Q6_K/SmolLM2-135M-Instruct-Q6_K-00002-of-00002.gguf",
    }  # fmt: skip  (cached levels and the vision projector are not fetched again)

    code, _, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--all", "--level", "Q4_1")
    assert code == 2 and err.strip() == "edgellm: --level and --all exclude each other"
    fake_hub.repos["org/tiny-llama"] = Repo(checkpoint_files())
    code, _, err = run_cli(capsys, "pull", "org/tiny-llama", "--all")
    assert code == 2 and err.strip().splitlines()[-1] == (
        "edgellm: org/tiny-llama holds a checkpoint, not GGUF files: --all is for GGUF repos"
    )


def test_package_of_a_gguf_repo_registers_the_levels_it_has(fake_hub, tmp_path, capsys):
    from edgellm.store import store

    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = levels_repo()
    code, out, err = run_cli(capsys, "package", "someone/SmolLM2-135M-Instruct-GGUF", "--levels", "Q4_1",
                             "-o", str(tmp_path / "pkg"))  # fmt: skip
    assert code == 0, err
    assert sorted(p for p, _ in fake_hub.downloads()) == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf", "mmproj-SmolLM2-f16.gguf"]
    assert out.strip() == str(store.resolve("SmolLM2-135M-Instruct"))
    assert (
        "someone/SmolLM2-135M-Instruct-GGUF holds GGUF files that are already quantized: registered Q4_1 in the "
        "store as SmolLM2-135M-Instruct (edgellm chat SmolLM2-135M-Instruct) and packaged nothing." in err
    )
    assert not (tmp_path / "pkg").exists()


def test_package_of_a_gguf_repo_without_a_float_level_is_refused_before_downloading(fake_hub, tmp_path, capsys):
    fake_hub.repos["someone/SmolLM2-GGUF"] = gguf_repo()  # Q4_1 only
    for levels in (["--levels", "Q8_0,Q4_1"], []):
        code, _, err = run_cli(capsys, "package", "someone/SmolLM2-GGUF", *levels, "-o", str(tmp_path / "pkg"))
        missing = "Q8_0" if levels else "the default levels"
        assert code == 2 and err.strip().splitlines()[-1] == (
            f"edgellm: someone/SmolLM2-GGUF holds only quantized GGUF files (levels: Q4_1) and no F16, BF16 or F32 "
            f"file to make {missing} from; requantizing a quantized file loses quality, so choose among its levels "
            "(--levels), or package the original checkpoint"
        )
    assert fake_hub.downloads() == []


@pytest.mark.slow
def test_package_of_a_gguf_repo_quantizes_missing_levels_from_its_float_file(fake_hub, tmp_path, capsys):
    f16 = fixtures.smollm2_f16_gguf().read_bytes()
    q41 = fixtures.smollm2_gguf().read_bytes()
    fake_hub.repos["someone/SmolLM2-GGUF"] = Repo({"SmolLM2-F16.gguf": f16, "SmolLM2-Q4_1.gguf": q41})
    code, out, err = run_cli(capsys, "package", "someone/SmolLM2-GGUF", "--levels", "Q8_0,Q4_1",
                             "-o", str(tmp_path / "pkg"), "--json")  # fmt: skip
    assert code == 0, err
    assert "someone/SmolLM2-GGUF holds GGUF files: quantizing levels Q8_0, Q4_1 from its F16 file" in err
    assert [p for p, _ in fake_hub.downloads()] == ["SmolLM2-F16.gguf"]  # the quantized file is not fetched
    manifest = json.loads(out)
    assert {f["level"] for f in manifest["files"]} >= {"Q8_0", "Q4_1"}
    assert (tmp_path / "pkg" / "SmolLM2-GGUF-Q8_0.gguf").is_file() or any((tmp_path / "pkg").glob("*-Q8_0.gguf"))
