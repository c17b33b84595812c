"""`edgellm push`: only the package goes up, its manifest without what is private to this machine, its card
with the Hub's metadata; uploaded through huggingface_hub's real code to the local Hub (tests/hubserver.py),
which negotiates LFS as the Hub does and whose Xet storage cannot be reached."""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import pytest
import yaml
from hubtesting import caches, fake_hub  # noqa: F401  (fixtures)

import fixtures
from conftest import run_cli
from edgellm.formats.gguf_info import read_gguf
from edgellm.store.manifest import FileEntry, Manifest, ModelFacts, TextRef, sha256_file

SNAPSHOT = "/home/someone/.cache/huggingface/hub/models--HuggingFaceTB--SmolLM2-135M-Instruct/snapshots/0a1b2c"


@pytest.fixture
def package(tmp_path):
    """A package as `edgellm package` leaves it after some use: a level, its manifest (with the local paths,
    commands and a bench run), a card, the importance matrix, a lock file, and things that are not the package."""
    folder = tmp_path / "SmolLM2"
    folder.mkdir()
    gguf = folder / "SmolLM2-Q4_1.gguf"
    os.link(fixtures.smollm2_gguf(), gguf)
    info = read_gguf(gguf)
    sha = sha256_file(gguf)
    command = f"edgellm package {SNAPSHOT} -o {folder} --levels Q4_1 --imatrix /home/someone/calib.txt"
    bench = {"pp_tps": 900.0, "tg_tps": 60.0, "ttft_s": 0.05, "peak_rss_bytes": 1 << 28,
             "machine": {"summary": "someone's laptop, 16 GiB", "platform": "Linux-6.1"}, "created": "2026-01-01"}  # fmt: skip
    m = Manifest(ModelFacts.from_gguf(info, name="SmolLM2 135M"), {"file": gguf.name, "level": "Q4_1", "sha256": sha},
                 source={"path": SNAPSHOT, "fingerprint": "f" * 64},
                 imatrix=TextRef("/home/someone/calib.txt", "c" * 64, 10, 5120, 512))  # fmt: skip
    m.put(FileEntry.from_gguf(info, "Q4_1", sha, command=command, bench=bench, imatrix=True))
    m.save(folder)
    (folder / "README.md").write_text("# SmolLM2 135M — GGUF package\n\nMade by edgellm.\n")
    (folder / "imatrix.gguf").write_bytes(b"GGUF imatrix")
    (folder / ".edgellm-package.lock").write_text("")
    shutil.copyfile(gguf, folder / ".SmolLM2-Q2_K.gguf")
    (folder / "old").mkdir()
    os.link(gguf, folder / "old" / "SmolLM2-Q8_0.gguf")
    (folder / "notes.txt").write_text("to do")
    return folder


def state(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n", 2)[1])


def test_dry_run_lists_exactly_what_goes_up_and_what_the_manifest_says(package, capsys):
    before = state(package)
    code, out, err = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF", "--dry-run", "--json")
    assert code == 0, err
    plan = json.loads(out)
    assert [f["path"] for f in plan["files"]] == ["README.md", "SmolLM2-Q4_1.gguf", "manifest.json"]
    assert {f["path"]: f["from"] for f in plan["files"]}["SmolLM2-Q4_1.gguf"] == str(package / "SmolLM2-Q4_1.gguf")
    assert {x["name"]: x["why"] for x in plan["left_out"]} == {
        ".SmolLM2-Q2_K.gguf": "hidden",
        ".edgellm-package.lock": "hidden",
        "imatrix.gguf": "the importance matrix (--with-imatrix uploads it)",
        "notes.txt": "not part of a package",
        "old/": "a sub-folder: only the package's top level goes up",
    }

    public = plan["manifest"]
    text = json.dumps(public)
    assert "/home/someone" not in text and str(package) not in text and "laptop" not in text
    assert public["source"] == {"fingerprint": "f" * 64}
    (entry,) = public["files"]
    assert entry["command"] == "" and entry["bench"] is None and entry["sha256"] == sha256_file(package / "SmolLM2-Q4_1.gguf")
    assert public["imatrix"]["text"] == "calib.txt"
    assert Manifest.from_dict(public).model.name == "SmolLM2 135M"  # still a manifest every reader takes

    meta = front_matter(plan["card"])
    assert meta == {
        "base_model": "HuggingFaceTB/SmolLM2-135M-Instruct",  # the snapshot the package was made from
        "base_model_relation": "quantized",
        "license": "apache-2.0",  # from the GGUF header
        "tags": ["gguf", "edgellm", "llama"],
        "quantized_by": "edgellm",
    }
    assert plan["card"].endswith("# SmolLM2 135M — GGUF package\n\nMade by edgellm.\n")
    assert state(package) == before  # the package on disk is not touched

    code, out, _ = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF", "--dry-run", "--with-imatrix", "--json")
    assert "imatrix.gguf" in [f["path"] for f in json.loads(out)["files"]]
    code, out, _ = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF", "--dry-run", "--license", "mit")
    assert code == 0 and out.startswith("would upload to me/SmolLM2-GGUF (") and "license: mit" in out
    assert "manifest.json will say:" in out and "  .SmolLM2-Q2_K.gguf  (hidden)" in out
    code, _, err = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF", "--json")
    assert code == 2 and err.strip() == "edgellm: --json goes with --dry-run"


def test_a_card_keeps_its_own_front_matter(package, capsys):
    (package / "README.md").write_text("---\nlicense: other\nlicense_name: smol\ntags: [chat]\n---\n# Mine\n")
    code, out, _ = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF", "--dry-run", "--json")
    meta = front_matter(json.loads(out)["card"])
    assert meta["license"] == "other" and meta["license_name"] == "smol"
    assert meta["tags"] == ["gguf", "chat", "edgellm", "llama"] and meta["quantized_by"] == "edgellm"

    (package / "README.md").write_text("---\nlicense: [apache\n---\n# Mine\n")
    code, _, err = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF", "--dry-run")
    assert code == 1 and err.strip().startswith("edgellm: README.md has YAML front matter that does not parse: ")


def test_push_uploads_the_package_through_lfs_when_xet_is_out_of_reach(fake_hub, package, monkeypatch, capsys):
    before = state(package)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    code, dry, _ = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF", "--dry-run", "--json")
    code, out, err = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF")
    assert code == 0, err
    repo = fake_hub.repos["me/SmolLM2-GGUF"]
    assert out.strip() == f"{fake_hub.urls['hub']}/me/SmolLM2-GGUF/commit/{repo.sha}"
    assert sorted(repo.files) == ["README.md", "SmolLM2-Q4_1.gguf", "manifest.json"]
    assert repo.files["SmolLM2-Q4_1.gguf"] == fixtures.smollm2_gguf().read_bytes()
    assert hashlib.sha256(repo.files["SmolLM2-Q4_1.gguf"]).hexdigest() in fake_hub.lfs_objects  # sent through LFS
    plan = json.loads(dry)
    assert json.loads(repo.files["manifest.json"]) == plan["manifest"]
    assert repo.files["README.md"].decode() == plan["card"] == fake_hub.card_checks[-1]
    xet = [line for line in err.splitlines() if "Xet" in line]
    assert len(xet) == 1 and xet[0].startswith("Hugging Face: Xet storage failed for me/SmolLM2-GGUF (")
    assert "metadata" not in err and "Traceback" not in err  # the Hub had nothing to say about the card
    assert state(package) == before

    # Pushing again sends nothing new: every file is already there.
    fake_hub.forget()
    code, out, err = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF")
    assert code == 0, err
    assert not any(method == "PUT" for method, _, _ in fake_hub.log)


def test_a_card_the_hub_refuses_is_one_line(fake_hub, package, monkeypatch, capsys):
    (package / "README.md").write_text("---\nlicense: Apache License 2.0\n---\n# Mine\n")
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    code, _, err = run_cli(capsys, "push", str(package), "me/SmolLM2-GGUF")
    assert code == 1 and err.strip().splitlines()[-1] == (
        "edgellm: Hugging Face refused README.md: Invalid metadata in README.md. - \"license\" must be one of the "
        "Hub's licence identifiers (or \"other\" with license_name)"
    )
    assert fake_hub.repos["me/SmolLM2-GGUF"].files == {}  # refused before anything was sent
