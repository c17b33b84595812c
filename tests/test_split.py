"""A model split in several GGUF files by llama.cpp's own `llama-gguf-split` is one model everywhere: read,
listed, planned, run, imported, verified, pulled and pushed whole; a missing or foreign part is named in one
line before llama.cpp sees the files. The parts are the real SmolLM2 Q4_1 file, split in three."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hubtesting import Repo, caches, edgellm_cli, fake_hub, machine_with_ram  # noqa: F401  (fixtures)

import fixtures
from conftest import run_cli
from edgellm.errors import EdgeError
from edgellm.fsutil import human_bytes
from edgellm.formats.gguf_info import read_gguf, read_gguf_file
from edgellm.formats.gguf_split import is_later_part, orphans, split_name, whole_name
from edgellm.store import store
from edgellm.store.manifest import FileEntry, Manifest, ModelFacts, sha256_file

N = fixtures.SPLIT_PARTS
STEM = "SmolLM2-135M-Instruct-Q4_1"
NAMES = [f"{STEM}-{i:05d}-of-{N:05d}.gguf" for i in range(1, N + 1)]
QUESTION = "What is the capital of France? Answer in one sentence."


@pytest.fixture(scope="module")
def split_dir():
    folder = fixtures.smollm2_split()
    if folder is None:
        pytest.skip("llama.cpp's tools (llama-gguf-split) cannot be built here: no cmake or ninja")
    return folder


@pytest.fixture
def parts(split_dir, tmp_path):
    """The parts, hard-linked into a folder of this test's own (so a test may remove or replace one)."""
    folder = tmp_path / "split"
    folder.mkdir()
    for name in NAMES:
        os.link(split_dir / name, folder / name)
    return folder


def test_split_names():
    s = split_name("dir/Llama-Q4_K_M-00002-of-00003.gguf")
    assert (s.prefix, s.no, s.count, s.first, s.whole) == ("Llama-Q4_K_M", 2, 3, "Llama-Q4_K_M-00001-of-00003.gguf", "Llama-Q4_K_M.gguf")
    assert split_name("Llama-Q4_K_M.gguf") is None and split_name("x-00004-of-00003.gguf") is None
    assert is_later_part("x-00002-of-00003.gguf") and not is_later_part("x-00001-of-00003.gguf")
    assert whole_name("x-Q8_0-00001-of-00002.gguf") == "x-Q8_0.gguf" and whole_name("x-Q8_0.gguf") == "x-Q8_0.gguf"
    assert orphans(["a-00002-of-00002.gguf", "b-00001-of-00002.gguf", "b-00002-of-00002.gguf"]) == ["a-00001-of-00002.gguf"]


def test_the_parts_read_as_the_file_they_were_split_from(split_dir, capsys):
    whole, first = read_gguf(fixtures.smollm2_gguf()), read_gguf(split_dir / NAMES[0])
    assert first.parts == tuple(split_dir / n for n in NAMES)
    assert first.file_size == sum((split_dir / n).stat().st_size for n in NAMES)
    assert [(t.name, t.ggml_type, t.shape, t.n_bytes) for t in first.tensors] == [
        (t.name, t.ggml_type, t.shape, t.n_bytes) for t in whole.tensors
    ]
    assert (first.tensor_bytes, first.n_params, first.layer_bytes()) == (whole.tensor_bytes, whole.n_params, whole.layer_bytes())
    alone = read_gguf_file(split_dir / NAMES[0])  # the first file by itself holds only some of the tensors
    assert alone.parts == () and len(alone.tensors) < len(whole.tensors)

    code, out, _ = run_cli(capsys, "inspect", str(split_dir / NAMES[0]), "--json")
    data = json.loads(out)
    assert code == 0 and data["parts"] == [str(split_dir / n) for n in NAMES]
    assert len(data["tensors"]) == len(whole.tensors) and data["file_size"] == first.file_size
    assert f"split in {N} parts" in " ".join(run_cli(capsys, "inspect", str(split_dir / NAMES[0]))[1].split())
    from edgellm.serve.names import served_model

    assert served_model("smol", "", "Q4_1", split_dir / NAMES[0]).size == first.file_size  # /api/tags, /v1/models
    code, _, err = run_cli(capsys, "inspect", str(split_dir / NAMES[1]))
    assert code == 1 and err.strip() == f"edgellm: {NAMES[1]} is part 2 of {N} of a split model: open its first part, {NAMES[0]}"


def test_list_and_plan_see_one_model_the_size_of_the_unsplit_file(parts, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")  # the table's rows on one line each
    code, out, err = run_cli(capsys, "import", str(parts), "--name", "smol")
    assert code == 0, err
    code, out, _ = run_cli(capsys, "list", "--json")
    [pkg] = json.loads(out)["packages"]
    assert pkg["error"] is None and [lv["level"] for lv in pkg["levels"]] == ["Q4_1"]
    assert pkg["size"] == pkg["levels"][0]["size"] == sum((parts / n).stat().st_size for n in NAMES)
    assert pkg["levels"][0]["file"] == f"smol-Q4_1-00001-of-{N:05d}.gguf" and pkg["levels"][0]["parts"] == N
    assert f"Q4_1 {human_bytes(pkg['size'])} in {N} files" in " ".join(run_cli(capsys, "list")[1].split())

    plans = {}
    for ref in ("smol", str(fixtures.smollm2_gguf())):
        code, out, err = run_cli(capsys, "plan", ref, "--json", "--ctx", "2048", "--ngl", "0")
        assert code == 0, err
        plans[ref] = json.loads(out)
    split, whole = plans["smol"], plans[str(fixtures.smollm2_gguf())]
    assert split["memory"] == whole["memory"] and split["memory"]["weights_cpu"] == read_gguf(fixtures.smollm2_gguf()).tensor_bytes
    assert split["levels"][0]["file_size"] == pkg["size"]
    assert Path(split["path"]).name == f"smol-Q4_1-00001-of-{N:05d}.gguf" and (split["parts"], whole["parts"]) == (N, 1)
    code, out, _ = run_cli(capsys, "plan", "smol", "--ctx", "2048", "--ngl", "0")
    assert f"Choice: Q4_1 (smol-Q4_1-00001-of-{N:05d}.gguf and {N - 1} more parts)" in " ".join(out.split())


def test_run_gives_the_unsplit_file_s_greedy_text_and_names_a_missing_part(parts):
    args = ("-p", QUESTION, "--temp", "0", "-n", "16", "--ctx", "512", "--ngl", "0", "-t", "1")
    split = edgellm_cli("run", str(parts / NAMES[0]), *args)
    whole = edgellm_cli("run", str(fixtures.smollm2_gguf()), *args)
    assert split.returncode == whole.returncode == 0, split.stderr
    assert split.stdout == whole.stdout and "Paris" in split.stdout

    (parts / NAMES[1]).unlink()
    for ref in (parts / NAMES[0], parts):  # the file, and the folder as a package
        done = edgellm_cli("run", str(ref), *args)
        assert done.returncode == 1 and done.stderr.strip() == (
            f"edgellm: {NAMES[1]} is missing: the model is split in {N} files and part 2 is not in {parts}"
        )  # ours, not llama.cpp's: it never saw the files


def test_a_part_from_another_split_or_a_renamed_first_part_is_named(parts, split_dir, tmp_path):
    tools = fixtures.llamacpp_tools()
    other = tmp_path / "other"
    other.mkdir()
    subprocess.run([str(tools / "build" / "bin" / "llama-gguf-split"), "--split", "--split-max-tensors", "50",
                    str(fixtures.smollm2_gguf()), str(other / "x")], check=True, capture_output=True)  # fmt: skip
    (parts / NAMES[1]).unlink()
    shutil.copyfile(other / "x-00002-of-00006.gguf", parts / NAMES[1])
    with pytest.raises(EdgeError) as caught:
        read_gguf(parts / NAMES[0])
    assert str(caught.value) == f"{NAMES[1]}: split.count is 6, the first part says {N}: it is from another split of the model"

    (parts / NAMES[1]).unlink()
    os.link(split_dir / NAMES[1], parts / NAMES[1])
    last = parts / NAMES[-1]
    data = last.read_bytes()
    last.unlink()
    last.write_bytes(data[: len(data) // 2])  # cut short: its tensors run past its end
    with pytest.raises(EdgeError) as caught:
        read_gguf(parts / NAMES[0])
    assert str(caught.value).startswith(f"corrupt GGUF file {last}: cut short")

    renamed = tmp_path / "model.gguf"
    os.link(split_dir / NAMES[0], renamed)
    with pytest.raises(EdgeError) as caught:
        read_gguf(renamed)
    assert str(caught.value) == (
        f"model.gguf is the first of {N} parts of a split model, but its name does not end in -00001-of-{N:05d}.gguf, "
        "by which llama.cpp finds the other parts"
    )


def test_import_links_every_part_and_a_gone_part_is_named(parts, capsys):
    code, out, err = run_cli(capsys, "import", str(parts / NAMES[0]), "--name", "smol")
    assert code == 0, err
    entry = store.resolve("smol")
    links = [f"smol-Q4_1-{i:05d}-of-{N:05d}.gguf" for i in range(1, N + 1)]
    assert sorted(p.name for p in entry.iterdir() if p.suffix == ".gguf") == links
    source = store.read_source(entry)
    assert source["files"] == {link: str(parts / n) for link, n in zip(links, NAMES)}
    assert source["sha256"] == {link: sha256_file(parts / n) for link, n in zip(links, NAMES)}

    code, _, err = run_cli(capsys, "import", str(parts / NAMES[1]))
    assert code == 2 and err.strip() == f"edgellm: {NAMES[1]} is part 2 of {N} of a split model: import its first part, {NAMES[0]}"

    (parts / NAMES[2]).unlink()
    code, out, _ = run_cli(capsys, "list", "--json")
    [pkg] = json.loads(out)["packages"]
    assert pkg["error"] == f"{links[2]} is missing: the model is split in {N} files and part 3 links to {parts / NAMES[2]}, which is gone"


def split_package(parts: Path) -> Path:
    """A package folder whose one level is split: the parts and a manifest that lists each."""
    info = read_gguf(parts / NAMES[0])
    sha = sha256_file(parts / NAMES[0])
    m = Manifest(ModelFacts.from_gguf(info, name="SmolLM2"), {"file": NAMES[0], "level": "Q4_1", "sha256": sha})
    m.put(FileEntry.from_gguf(info, "Q4_1", sha))
    m.save(parts)
    return parts


def test_the_manifest_lists_every_part_and_verify_hashes_each(parts, capsys):
    folder = split_package(parts)
    [entry] = Manifest.load(folder).files
    assert entry.file == NAMES[0] and entry.bytes == sum((parts / n).stat().st_size for n in NAMES)
    assert [(p.file, p.bytes, p.sha256) for p in entry.parts] == [
        (n, (parts / n).stat().st_size, sha256_file(parts / n)) for n in NAMES
    ]
    code, out, err = run_cli(capsys, "verify", str(folder), "--json")
    assert code == 0 and json.loads(out)["ok"] and json.loads(out)["files"] == N, err

    last = parts / NAMES[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes
    last.unlink()
    last.write_bytes(data)
    code, _, err = run_cli(capsys, "verify", str(folder))
    assert code == 1 and err.strip().splitlines() == [
        f"{NAMES[-1]}: sha256 does not match the manifest",
        f"edgellm: 1 of {N} file(s) in {folder} do not match manifest.json",
    ]
    done = edgellm_cli("run", str(folder), "-p", "hi", "-n", "2", "--ctx", "512", "-t", "1")
    assert done.returncode == 1 and done.stderr.strip() == (
        f"edgellm: {NAMES[-1]} does not match its manifest's sha256: the file is damaged or was changed"
    )

    raw = json.loads((folder / "manifest.json").read_text())
    raw["files"][0]["parts"][1]["file"] = "../elsewhere.gguf"
    (folder / "manifest.json").write_text(json.dumps(raw))
    code, _, err = run_cli(capsys, "verify", str(folder))
    assert code == 1 and "'../elsewhere.gguf' is not a plain file name in the package folder" in err.strip()


def test_push_uploads_every_part_and_refuses_a_split_level_with_a_part_missing(fake_hub, parts, monkeypatch, capsys):
    folder = split_package(parts)
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    code, out, err = run_cli(capsys, "push", str(folder), "me/SmolLM2-GGUF")
    assert code == 0, err
    repo = fake_hub.repos["me/SmolLM2-GGUF"]
    assert sorted(repo.files) == ["README.md", *NAMES, "manifest.json"]
    assert all(hashlib.sha256(repo.files[n]).hexdigest() == sha256_file(parts / n) for n in NAMES)
    assert [p["file"] for p in json.loads(repo.files["manifest.json"])["files"][0]["parts"]] == NAMES

    (parts / NAMES[1]).unlink()
    code, _, err = run_cli(capsys, "push", str(folder), "me/SmolLM2-GGUF", "--dry-run")
    assert code == 1 and err.strip() == f"edgellm: {NAMES[1]} is missing: the model is split in {N} files and part 2 is not in {folder}"


def test_pull_plans_a_split_level_from_every_part_s_header_and_fetches_them_all(fake_hub, split_dir, monkeypatch, capsys):
    machine_with_ram(monkeypatch, 4096)
    files = {f"Q4_1/{n}": (split_dir / n).read_bytes() for n in NAMES}
    fake_hub.repos["someone/SmolLM2-135M-Instruct-GGUF"] = Repo(files=files | {"README.md": b"# gguf\n"})
    code, out, err = run_cli(capsys, "pull", "someone/SmolLM2-135M-Instruct-GGUF", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["level_chosen"] == "Q4_1" and result["files"] == sorted(["README.md", *files])
    assert {p for p, _ in fake_hub.range_reads()} == set(files)  # every part's header was read to plan
    assert sorted(p for p, _ in fake_hub.downloads()) == sorted(["README.md", *files])

    code, out, _ = run_cli(capsys, "list", "--json")
    [pkg] = json.loads(out)["packages"]
    assert pkg["error"] is None and [lv["level"] for lv in pkg["levels"]] == ["Q4_1"]
    assert pkg["size"] == sum(len(b) for b in files.values())

    fake_hub.repos["someone/Broken-GGUF"] = Repo(files={k: v for k, v in files.items() if not k.endswith(NAMES[2])})
    code, out, err = run_cli(capsys, "plan", "someone/Broken-GGUF", "--json")
    assert code == 3 and json.loads(out)["why_not"] == (
        f"Broken has no level that can be read: {NAMES[2]} is missing from the repo: the level is split in {N} files "
        f"and part 3 is not listed beside Q4_1/{NAMES[0]}"
    )


def test_quantize_refuses_a_split_base_in_one_line(split_dir, tmp_path, capsys):
    code, _, err = run_cli(capsys, "quantize", str(split_dir / NAMES[0]), "--levels", "Q8_0", "--allow-requantize",
                           "-o", str(tmp_path))  # fmt: skip
    assert code == 2 and err.strip() == (
        f"edgellm: {NAMES[0]} is the first of {N} parts of a split model: quantize from one file "
        f"(llama-gguf-split --merge {NAMES[0]} merged.gguf makes it)"
    )
    assert list(tmp_path.iterdir()) == []


def test_package_writes_a_level_in_parts_that_hold_the_whole_file_s_tensors(tmp_path, capsys):
    """`package --split-max-size` against the same level made in one file: the same tensors, byte for byte, the
    same metadata but for the split keys, the same greedy text from llama.cpp; a re-run keeps the parts."""
    from gguf import GGUFReader

    made = fixtures.smollm2_package()
    base, whole = made / "smollm2-hf-F16.gguf", made / "smollm2-hf-Q8_0.gguf"
    out = tmp_path / "pkg"
    args = ("package", str(base), "-o", str(out), "--levels", "Q8_0", "--split-max-size", "40M", "--json")
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0, err
    [entry] = [f for f in json.loads(stdout)["files"] if f["level"] == "Q8_0"]
    names = [p["file"] for p in entry["parts"]]
    assert len(names) == 4 and names[0] == entry["file"] == "smollm2-hf-Q8_0-00001-of-00004.gguf"
    assert all((out / n).stat().st_size <= (40 << 20) + (4 << 20) for n in names[1:])  # tensors, plus a header
    assert not (out / "smollm2-hf-Q8_0.gguf").exists() and entry["bytes"] == sum((out / n).stat().st_size for n in names)

    one = GGUFReader(whole)
    parts = [GGUFReader(out / n) for n in names]
    assert {t.name: bytes(t.data) for t in one.tensors} == {t.name: bytes(t.data) for r in parts for t in r.tensors}
    meta = {k: v for k, v in read_gguf(out / names[0]).metadata.items() if not k.startswith("split.")}
    assert meta == read_gguf(whole).metadata

    q = ("-p", QUESTION, "--temp", "0", "-n", "16", "--ctx", "512", "--ngl", "0", "-t", "1")
    split, single = edgellm_cli("run", str(out), *q), edgellm_cli("run", str(whole), *q)
    assert split.returncode == single.returncode == 0 and split.stdout == single.stdout, split.stderr
    assert run_cli(capsys, "verify", str(out))[1].strip() == f"{out}: all 4 file(s) match manifest.json"
    code, stdout, err = run_cli(capsys, *args)
    assert code == 0 and [f["parts"] for f in json.loads(stdout)["files"] if f["level"] == "Q8_0"] == [entry["parts"]]

    code, _, err = run_cli(capsys, "package", str(base), "-o", str(tmp_path / "x"), "--split-max-size", "40")
    assert code == 2 and err.strip() == (
        "edgellm: --split-max-size must be a size of 1M or more, with a unit (K, M, G, T): 40G, 500M; not 40"
    )
