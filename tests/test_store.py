"""The local store and `edgellm list / rm / push`, on real GGUF files (SmolLM2-135M-Instruct Q4_1)."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from hubtesting import caches, fake_hub, gguf_repo, go_offline  # noqa: F401  (fixtures)

import fixtures
from conftest import run_cli
from edgellm.hub import model as hubmodel
from edgellm import paths
from edgellm.store import store
from edgellm.fsutil import human_bytes
from edgellm.store.models import resolve_model

GGUF_SIZE = fixtures.smollm2_gguf().stat().st_size
SIZE = human_bytes(GGUF_SIZE)


def make_package(gguf_copy, name="SmolLM2", level="Q4_1"):
    folder = paths.store_dir() / name
    folder.mkdir(parents=True)
    os.link(gguf_copy, folder / f"{name}-{level}.gguf")
    return folder


def test_list_json_schema(gguf_copy, capsys):
    folder = make_package(gguf_copy)
    code, out, _ = run_cli(capsys, "list", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["store"] == str(paths.store_dir())
    (pkg,) = report["packages"]
    assert set(pkg) == {"name", "path", "origin", "source", "size", "levels", "fits", "fit_note", "error", "projector"}
    assert pkg["name"] == "SmolLM2" and pkg["path"] == str(folder) and pkg["origin"] == "local"
    assert pkg["source"] is None and pkg["error"] is None and pkg["projector"] is None
    (level,) = pkg["levels"]
    assert set(level) == {"level", "file", "size", "bits_per_weight", "fit", "parts", "accuracy"} and level["parts"] == 1
    assert level["level"] == "Q4_1" and level["file"] == "SmolLM2-Q4_1.gguf" and level["size"] == GGUF_SIZE
    assert 4.5 < level["bits_per_weight"] < 6  # Q4_1 plus the F32 norms and the Q8/Q6 output head
    assert pkg["size"] == GGUF_SIZE
    # 94 MiB fits any machine that runs these tests, in RAM at least.
    assert pkg["fits"] == "Q4_1" and level["fit"] in ("cpu", "partial", "gpu") and "-token context" in pkg["fit_note"]


def test_list_on_a_machine_too_small(gguf_copy, monkeypatch, capsys):
    from edgellm.plan import hardware

    make_package(gguf_copy)
    monkeypatch.setattr(hardware, "detect", lambda: hardware.synthetic(ram=64 << 20))  # 64 MiB of RAM
    (pkg,) = json.loads(run_cli(capsys, "list", "--json")[1])["packages"]
    assert pkg["fits"] is None and pkg["levels"][0]["fit"] == "no" and pkg["fit_note"]
    code, out, _ = run_cli(capsys, "list")
    row = next(line for line in out.splitlines() if "SmolLM2" in line)
    assert code == 0 and " - " in row


def test_list_table_and_empty_store(gguf_copy, capsys):
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "no packages in" in out
    assert json.loads(run_cli(capsys, "list", "--json")[1])["packages"] == []
    make_package(gguf_copy)
    code, out, _ = run_cli(capsys, "list")
    assert code == 0
    row = next(line for line in out.splitlines() if "SmolLM2" in line)
    assert f"Q4_1 {SIZE}" in row and "local" in row


def test_resolve_store_names(gguf_copy):
    folder = make_package(gguf_copy)
    assert store.resolve("SmolLM2") == folder
    assert store.resolve("smollm2") == folder  # case-insensitive while unambiguous
    for bad in ("nope", "../SmolLM2", "", ".hidden", "a/b"):
        assert store.resolve(bad) is None
    ref = resolve_model("smollm2")  # what chat/run/bench call
    assert ref.source == folder and [f.level for f in ref.files] == ["Q4_1"]


def test_rm(gguf_copy, capsys):
    make_package(gguf_copy)
    make_package(gguf_copy, "Other")
    code, out, _ = run_cli(capsys, "rm", "SmolLM2")
    assert code == 0 and out.strip() == f"removed SmolLM2 ({SIZE} freed)"
    assert store.names() == ["Other"]
    code, _, err = run_cli(capsys, "rm", "SmolLM2")
    assert code == 2 and err.strip() == "edgellm: no package 'SmolLM2' in the store (Other)"
    code, _, err = run_cli(capsys, "rm", "../models")
    assert code == 2 and err.strip() == "edgellm: not a store name: '../models'"
    assert store.names() == ["Other"]


def test_a_broken_entry_is_listed_not_fatal(gguf_copy, capsys, tmp_path):
    make_package(gguf_copy)
    broken = paths.store_dir() / "Gone"
    broken.mkdir()
    (broken / "Gone-Q4_K_M.gguf").symlink_to(tmp_path / "deleted-from-the-hub-cache.gguf")
    code, out, _ = run_cli(capsys, "list", "--json")
    assert code == 0
    by_name = {p["name"]: p for p in json.loads(out)["packages"]}
    assert by_name["SmolLM2"]["error"] is None
    assert by_name["Gone"]["error"] and by_name["Gone"]["levels"] == []
    code, out, _ = run_cli(capsys, "list")
    assert code == 0 and "unreadable" in out
    code, out, _ = run_cli(capsys, "rm", "Gone")
    assert code == 0 and out.strip() == "removed Gone (0 B freed)" and store.names() == ["SmolLM2"]


# ---------------------------------------------------------------------------------- GGUF repos from a hub


@pytest.mark.slow  # downloads and hashes the demo GGUF
def test_pull_a_gguf_repo_registers_it(fake_hub, caches, monkeypatch, capsys):
    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = gguf_repo()
    code, out, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["kind"] == "gguf" and result["files"] == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf"]
    assert result["store_name"] == "SmolLM2-135M-Instruct"
    assert sorted(p for p, _ in fake_hub.downloads()) == ["README.md", "SmolLM2-135M-Instruct-Q4_1.gguf"]

    entry = store.resolve("SmolLM2-135M-Instruct")
    link = entry / "SmolLM2-135M-Instruct-Q4_1.gguf"
    assert link.is_symlink() and link.resolve().parent.name == "blobs"  # the file stays in the HF cache
    assert link.read_bytes()[:4] == b"GGUF"
    (pkg,) = json.loads(run_cli(capsys, "list", "--json")[1])["packages"]
    assert pkg["origin"] == "hf:someone/SmolLM2-135M-Instruct-GGUF" and pkg["size"] == GGUF_SIZE
    assert pkg["levels"][0]["level"] == "Q4_1"
    assert resolve_model("SmolLM2-135M-Instruct").files[0].path == link

    # Offline, pulling again re-registers from the cache; a missing level is named.
    go_offline(monkeypatch)
    code, out, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF")
    assert code == 0 and "registered as SmolLM2-135M-Instruct" in err
    code, _, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--level", "Q8_0")
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        "edgellm: offline and the cached copy of someone/SmolLM2-135M-Instruct-GGUF "
        "no GGUF file at level Q8_0 (levels there: Q4_1)"
    )

    # rm drops the entry; the file stays in the hub's cache for other tools.
    blob = link.resolve()
    code, out, _ = run_cli(capsys, "rm", "SmolLM2-135M-Instruct")
    assert code == 0 and out.strip() == (
        f"removed SmolLM2-135M-Instruct; its {SIZE} stay in the Hugging Face cache "
        "(hf cache rm model/someone/SmolLM2-135M-Instruct-GGUF)"
    )
    assert store.names() == [] and blob.is_relative_to(caches["hf"]) and blob.stat().st_size == GGUF_SIZE


@pytest.mark.slow  # downloads and hashes the demo GGUF
def test_a_registered_repo_never_replaces_a_local_package(fake_hub, gguf_copy):
    local = make_package(gguf_copy, "SmolLM2-135M-Instruct")
    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = gguf_repo()
    hubmodel.pull("someone/SmolLM2-135M-Instruct-GGUF")
    assert store.names() == ["SmolLM2-135M-Instruct", "SmolLM2-135M-Instruct-someone"]
    assert not (local / store.SOURCE_FILE).exists()


# ------------------------------------------------------------------------------------------------------ push


def test_push_checks_before_uploading(gguf_copy, caches, tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    code, _, err = run_cli(capsys, "push", str(tmp_path), "me/SmolLM2-GGUF")
    assert code == 2 and err.strip() == f"edgellm: {tmp_path} holds no .gguf files at its top level: nothing to push"
    code, _, err = run_cli(capsys, "push", "nope", "me/SmolLM2-GGUF")
    assert code == 2 and err.strip() == "edgellm: no package folder or store entry named nope"

    make_package(gguf_copy)
    code, _, err = run_cli(capsys, "push", "SmolLM2", "me/SmolLM2-GGUF")  # a store name works as DIR
    assert code == 1 and err.strip() == "edgellm: push needs the network, and HF_HUB_OFFLINE is set"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    code, _, err = run_cli(capsys, "push", "SmolLM2", "me/SmolLM2-GGUF")
    assert code == 1 and err.strip() == (
        "edgellm: push needs a Hugging Face login with write access: `hf auth login` or HF_TOKEN"
    )
    code, _, err = run_cli(capsys, "push", "SmolLM2", "not an id")
    assert code == 2 and "not a hub repo id" in err


@pytest.mark.slow
def test_push_then_pull_round_trip(fake_hub, gguf_copy, monkeypatch, capsys):
    from edgellm.formats.gguf_info import read_gguf
    from edgellm.store.manifest import FileEntry, Manifest, ModelFacts, sha256_file

    folder = make_package(gguf_copy)
    info = read_gguf(folder / "SmolLM2-Q4_1.gguf")
    sha = sha256_file(info.path)
    manifest = Manifest(ModelFacts.from_gguf(info, name="SmolLM2 135M"), {"file": info.path.name, "level": "Q4_1", "sha256": sha})
    manifest.put(FileEntry.from_gguf(info, "Q4_1", sha))
    manifest.save(folder)
    (folder / "notes.txt").write_text("not part of a package")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    code, _, err = run_cli(capsys, "push", str(folder), "me/SmolLM2-GGUF")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: Hugging Face refused the upload to me/SmolLM2-GGUF (401): "
        "log in with write access (`hf auth login` or HF_TOKEN)"
    )

    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    code, out, err = run_cli(capsys, "push", str(folder), "me/SmolLM2-GGUF")
    assert code == 0, err
    assert out.strip().endswith("/me/SmolLM2-GGUF/commit/" + fake_hub.repos["me/SmolLM2-GGUF"].sha)
    uploaded = fake_hub.repos["me/SmolLM2-GGUF"].files
    assert sorted(uploaded) == ["README.md", "SmolLM2-Q4_1.gguf", "manifest.json"]  # a card written from the manifest

    shutil.rmtree(folder)  # and back: the pushed package pulls as a GGUF repo named after it, manifest and all
    code, out, err = run_cli(capsys, "pull", "me/SmolLM2-GGUF")
    assert code == 0, err
    entry = store.resolve("SmolLM2")
    assert sorted(p.name for p in entry.iterdir()) == ["README.md", "SmolLM2-Q4_1.gguf", "manifest.json", "source.json"]
    assert (entry / "SmolLM2-Q4_1.gguf").read_bytes() == fixtures.smollm2_gguf().read_bytes()
    assert resolve_model("SmolLM2").name == "SmolLM2 135M"  # from the manifest
