"""`edgellm import`: GGUF models from other tools' folders, in the store as links to the real files
(SmolLM2-135M-Instruct Q4_1, laid out as the Hugging Face cache, LM Studio and Ollama keep their models)."""

from __future__ import annotations

import hashlib
import json
import os

import fixtures
from conftest import run_cli
from edgellm import paths
from edgellm.store import store
from edgellm.store.models import resolve_model

DATA = fixtures.smollm2_gguf().read_bytes()
SHA = hashlib.sha256(DATA).hexdigest()


def put(gguf_copy, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    os.link(gguf_copy, path)
    return path


def ollama_models(gguf_copy, root, manifest=True):
    """Ollama's models folder: the weights as a blob named by their digest, a manifest naming them."""
    blob = put(gguf_copy, root / "blobs" / f"sha256-{SHA}")
    (root / "blobs" / "sha256-0123").write_text('{"stop": ["<|im_end|>"]}')  # a params blob: not GGUF
    if manifest:
        m = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2" / "135m"
        m.parent.mkdir(parents=True)
        m.write_text(json.dumps({"schemaVersion": 2, "layers": [
            {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{SHA}", "size": len(DATA)},
            {"mediaType": "application/vnd.ollama.image.params", "digest": "sha256:0123", "size": 25},
        ]}))  # fmt: skip
    else:
        (root / "manifests").mkdir()
    return blob


def entry_files(name):
    folder = store.resolve(name)
    return {p.name: os.readlink(p) for p in folder.glob("*.gguf")}, json.loads((folder / store.SOURCE_FILE).read_text())


def test_import_a_file_links_it_and_records_its_sha256(gguf_copy, tmp_path, capsys):
    src = put(gguf_copy, tmp_path / "downloads" / "SmolLM2-135M-Instruct-Q4_1.gguf")
    code, out, err = run_cli(capsys, "import", str(src))
    assert code == 0, err
    name = "Smollm2-135M-8k-Lc100K-Mix1-Ep2"  # a lone file is named by its header's general.name
    assert out.startswith(f"imported {name}: Q4_1 (") and out.strip().endswith(f"edgellm chat {name}")
    links, source = entry_files(name)
    assert links == {f"{name}-Q4_1.gguf": str(src)}  # a link: nothing copied
    assert source == {"imported": str(src), "files": {f"{name}-Q4_1.gguf": str(src)}, "sha256": {f"{name}-Q4_1.gguf": SHA}}
    assert resolve_model(name).files[0].path.read_bytes()[:4] == b"GGUF"

    (pkg,) = json.loads(run_cli(capsys, "list", "--json")[1])["packages"]
    assert pkg["origin"] == f"import:{src}" and pkg["levels"][0]["level"] == "Q4_1"
    code, out, _ = run_cli(capsys, "rm", name)
    assert code == 0 and out.strip().startswith(f"removed {name}; its ") and out.strip().endswith(f"imported from ({src})")
    assert src.read_bytes() == DATA and store.names() == []

    assert run_cli(capsys, "import", str(src), "--name", "smol")[0] == 0
    assert store.names() == ["smol"]
    assert run_cli(capsys, "import", str(src), "--name", "smol")[0] == 0  # again: the same entry, refreshed
    assert store.names() == ["smol"]


def test_import_the_hugging_face_cache_and_lm_studio(gguf_copy, tmp_path, capsys):
    hf = tmp_path / "hf" / "hub"
    blob = put(gguf_copy, hf / "models--bartowski--SmolLM2-135M-Instruct-GGUF" / "blobs" / SHA)
    snap = hf / "models--bartowski--SmolLM2-135M-Instruct-GGUF" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "SmolLM2-135M-Instruct-Q4_1.gguf").symlink_to(os.path.relpath(blob, snap))
    lms = tmp_path / "lmstudio" / "models"
    put(gguf_copy, lms / "lmstudio-community" / "SmolLM2-135M-GGUF" / "SmolLM2-135M-Q4_1.gguf")
    (lms / "lmstudio-community" / "SmolLM2-135M-GGUF" / "mmproj-SmolLM2-f16.gguf").write_bytes(b"GGUF\x03\x00")  # damaged

    code, out, err = run_cli(capsys, "import", str(hf))
    assert code == 0, err
    assert store.names() == ["SmolLM2-135M-Instruct"]  # the snapshot's repo, without -GGUF; blobs/ not twice
    links, _ = entry_files("SmolLM2-135M-Instruct")
    assert links == {"SmolLM2-135M-Instruct-Q4_1.gguf": str(snap / "SmolLM2-135M-Instruct-Q4_1.gguf")}

    code, out, err = run_cli(capsys, "import", str(lms))
    assert code == 0, err
    assert store.names() == ["SmolLM2-135M", "SmolLM2-135M-Instruct"]
    assert "skipped " in err and "mmproj-SmolLM2-f16.gguf" in err  # one line for the file that is no model

    code, _, err = run_cli(capsys, "import", str(tmp_path), "--name", "x")
    assert code == 2 and "holds 2 models" in err and "--name names one" in err


def test_import_ollama_models_and_blobs(gguf_copy, tmp_path, capsys):
    root = tmp_path / "ollama" / "models"
    blob = ollama_models(gguf_copy, root)
    code, out, err = run_cli(capsys, "import", str(root))
    assert code == 0, err
    assert store.names() == ["smollm2-135m"]  # library/smollm2:135m, from the manifest
    links, source = entry_files("smollm2-135m")
    assert links == {"smollm2-135m-Q4_1.gguf": str(blob)} and source["sha256"] == {"smollm2-135m-Q4_1.gguf": SHA}
    assert resolve_model("smollm2-135m").files[0].level == "Q4_1"

    store.remove("smollm2-135m")
    assert run_cli(capsys, "import", str(blob))[0] == 0  # the blob alone, found by its magic: still named
    assert store.names() == ["smollm2-135m"]


def test_import_an_ollama_blob_without_a_manifest_is_named_from_its_header(gguf_copy, tmp_path, capsys):
    blob = ollama_models(gguf_copy, tmp_path / "models", manifest=False)
    code, out, err = run_cli(capsys, "import", str(blob))
    assert code == 0, err
    assert store.names() == ["Smollm2-135M-8k-Lc100K-Mix1-Ep2"]


def test_a_damaged_ollama_blob_is_refused(gguf_copy, tmp_path, capsys):
    root = tmp_path / "models"
    blob = ollama_models(gguf_copy, root)
    damaged = root / "blobs" / f"sha256-{'0' * 64}"
    blob.rename(damaged)
    code, _, err = run_cli(capsys, "import", str(damaged))
    assert code == 1 and err.strip() == (
        f"edgellm: {damaged} does not hash to its Ollama digest: the blob is damaged (ollama pull it again)"
    )
    assert store.names() == []


def test_import_refuses_what_holds_no_model(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("hello")
    code, _, err = run_cli(capsys, "import", str(tmp_path / "notes.txt"))
    assert code == 2 and err.strip() == (
        f"edgellm: {tmp_path / 'notes.txt'} is not a GGUF file (it does not start with the GGUF magic)"
    )
    code, _, err = run_cli(capsys, "import", str(tmp_path))
    assert code == 2 and err.strip() == f"edgellm: no GGUF model files under {tmp_path}"
    code, _, err = run_cli(capsys, "import", str(tmp_path / "nope"))
    assert code == 2 and err.strip() == f"edgellm: no such file or folder: {tmp_path / 'nope'}"
    (tmp_path / "bad.gguf").write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 16)  # a header that does not parse
    code, _, err = run_cli(capsys, "import", str(tmp_path))
    assert code == 2 and f"skipped {tmp_path / 'bad.gguf'}: " in err
    assert not paths.store_dir().exists() or store.names() == []


def test_import_hard_links_where_symlinks_fail(gguf_copy, tmp_path, monkeypatch, capsys):
    src = put(gguf_copy, tmp_path / "m" / "SmolLM2-Q4_1.gguf")

    def no_symlinks(*args, **kwargs):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "symlink", no_symlinks)  # as on Windows without the privilege
    code, out, err = run_cli(capsys, "import", str(src), "--name", "smol")
    assert code == 0, err
    link = store.resolve("smol") / "smol-Q4_1.gguf"
    assert not link.is_symlink() and os.path.samefile(link, src)  # the same file: no second copy
