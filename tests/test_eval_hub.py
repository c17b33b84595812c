"""`edgellm eval --hellaswag hf://OWNER/NAME/PATH` (or ms://): a dataset's task file through huggingface_hub or
modelscope_hub, from the fake hubs (tests/hubserver.py), into the hub's cache; offline or out of reach the cached
copy serves, and a file never fetched, a missing file, dataset or revision is one line."""

from __future__ import annotations

import json

import eval_data
import fixtures
import pytest
from conftest import run_cli
from hubserver import Repo, closed_port
from hubtesting import caches, edgellm_cli, fake_hub, fake_modelscope, go_offline  # noqa: F401  (fixtures)

from edgellm.errors import EdgeError
from edgellm.eval import tasks as T
from edgellm.hub.datasets import DatasetRef, dataset_file, parse


def test_task_file_from_a_dataset_repo_then_offline(tmp_path, fake_hub, monkeypatch, capsys):  # noqa: F811
    hs = eval_data.write_hellaswag(tmp_path / "hs.txt")
    fake_hub.repos["datasets/tests/hellaswag"] = Repo({"data/hs.txt": hs.read_bytes(), "README.md": b"# hs\n"})
    args = ("eval", str(fixtures.smollm2_gguf()), "--limit", "2", "--json", "--threads", "2")
    code, out, err = run_cli(capsys, *args, "--hellaswag", "hf://tests/hellaswag/data/hs.txt")
    assert code == 0, err
    (task_set,) = json.loads(out)["task_sets"]
    assert task_set["sha256"] == T.load(T.HELLASWAG, hs).sha256 and task_set["file"] == "hs.txt"
    assert ("GET", "/datasets/tests/hellaswag/resolve/main/data/hs.txt", None) in fake_hub.log

    code, _, err = run_cli(capsys, *args, "--hellaswag", "hf://datasets/tests/hellaswag/data/missing.txt")
    assert code != 0 and err.strip() == ("edgellm: hf://datasets/tests/hellaswag/data/missing.txt: dataset "
                                         "tests/hellaswag has no file data/missing.txt")

    go_offline(monkeypatch)
    fake_hub.forget()
    code, out, err = run_cli(capsys, *args, "--hellaswag", "hf://tests/hellaswag/data/hs.txt")
    assert code == 0, err
    assert json.loads(out)["task_sets"][0]["sha256"] == task_set["sha256"] and fake_hub.log == []
    code, _, err = run_cli(capsys, *args, "--hellaswag", "hf://tests/hellaswag/README.md")
    assert code != 0 and err.count("\n") == 1
    assert err.startswith("edgellm: hf://tests/hellaswag/README.md: offline and the file is not in the Hugging Face cache")


# ------------------------------------------------------------------------------------------------ ModelScope


def _ms_dataset(hub, folder, refs: frozenset[str] = frozenset()):
    """A HellaSwag file written to `folder` and held by dataset tests/hellaswag on the fake ModelScope."""
    hs = eval_data.write_hellaswag(folder / "hs.txt")
    hub.repos["datasets/tests/hellaswag"] = Repo({"data/hs.txt": hs.read_bytes(), "README.md": b"# hs\n"}, refs=set(refs))
    return hs


def test_task_file_from_a_modelscope_dataset_then_offline(tmp_path, fake_modelscope, caches, monkeypatch, capsys):  # noqa: F811
    """modelscope_hub's own download_file fetches the file into ModelScope's cache; offline it serves from there."""
    hs = _ms_dataset(fake_modelscope, tmp_path)
    args = ("eval", str(fixtures.smollm2_gguf()), "--limit", "2", "--json", "--threads", "2")
    code, out, err = run_cli(capsys, *args, "--hellaswag", "ms://tests/hellaswag/data/hs.txt")
    assert code == 0, err
    (task_set,) = json.loads(out)["task_sets"]
    assert task_set["sha256"] == T.load(T.HELLASWAG, hs).sha256 and task_set["file"] == "hs.txt"
    assert fake_modelscope.modelscope_downloads() == ["data/hs.txt"]
    assert ("GET", "/api/v1/datasets/tests/hellaswag/repo?FilePath=data/hs.txt", None) in fake_modelscope.log
    cached = caches["modelscope"] / "datasets" / "tests--hellaswag" / "snapshots" / "master" / "data" / "hs.txt"
    assert cached.read_bytes() == hs.read_bytes()

    go_offline(monkeypatch)
    fake_modelscope.forget()
    code, out, err = run_cli(capsys, *args, "--hellaswag", "modelscope://tests/hellaswag/data/hs.txt")
    assert code == 0, err
    assert json.loads(out)["task_sets"][0]["sha256"] == task_set["sha256"] and fake_modelscope.log == []
    code, _, err = run_cli(capsys, *args, "--hellaswag", "ms://tests/hellaswag/README.md")
    assert code != 0 and err.count("\n") == 1 and fake_modelscope.log == []
    assert err.strip() == ("edgellm: ms://tests/hellaswag/README.md: offline and the file is not in the ModelScope "
                           f"cache ({caches['modelscope']})")


@pytest.mark.parametrize(
    "ref, line",
    [
        ("ms://tests/hellaswag/data/missing.txt", "ms://tests/hellaswag/data/missing.txt: dataset tests/hellaswag has no file data/missing.txt"),
        ("ms://tests/nothing/hs.txt", "no repo tests/nothing on ModelScope (if it is private, log in: `ms login` or MODELSCOPE_API_TOKEN)"),
        ("ms://tests/hellaswag@nope/data/hs.txt", "tests/hellaswag on ModelScope has no revision nope (a branch, tag or commit)"),
        ("ms://tests/gated/hs.txt", "tests/gated on ModelScope needs access: accept its licence at https://modelscope.cn/datasets/tests/gated and log in (`ms login` or MODELSCOPE_API_TOKEN)"),
    ],
)  # fmt: skip
def test_modelscope_dataset_errors_are_one_line(tmp_path, fake_modelscope, ref, line, capsys):  # noqa: F811
    hs = _ms_dataset(fake_modelscope, tmp_path)
    fake_modelscope.repos["datasets/tests/gated"] = Repo({"hs.txt": hs.read_bytes()}, gated=True)
    code, out, err = run_cli(capsys, "eval", str(fixtures.smollm2_gguf()), "--hellaswag", ref)
    assert code != 0 and out == "" and err == f"edgellm: {line}\n"


def test_modelscope_dataset_at_a_revision(tmp_path, fake_modelscope, caches):  # noqa: F811
    data = _ms_dataset(fake_modelscope, tmp_path, refs=frozenset({"v1"})).read_bytes()
    path = dataset_file("ms://tests/hellaswag@v1/data/hs.txt")
    assert path == caches["modelscope"] / "datasets" / "tests--hellaswag" / "snapshots" / "v1" / "data" / "hs.txt"
    assert path.read_bytes() == data
    assert fake_modelscope.log[-1][1] == "/api/v1/datasets/tests/hellaswag/repo?FilePath=data/hs.txt"


def test_modelscope_out_of_reach_serves_the_cached_copy_else_one_line(tmp_path, fake_modelscope, caches, monkeypatch):  # noqa: F811
    """With the hub out of reach a cached file still serves; one never fetched is a status line for the retries
    (modelscope_hub logs each with a timestamp) and the error line, as the terminal shows them."""
    import modelscope_hub

    data = _ms_dataset(fake_modelscope, tmp_path).read_bytes()
    assert dataset_file("ms://tests/hellaswag/data/hs.txt").read_bytes() == data
    dead = closed_port()
    try:
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", f"http://127.0.0.1:{dead.getsockname()[1]}")
        modelscope_hub.set_default_config(None)
        assert dataset_file("ms://tests/hellaswag/data/hs.txt").read_bytes() == data
        r = edgellm_cli("eval", "--hellaswag", "ms://tests/hellaswag/README.md",
                        MODELSCOPE_DOWNLOAD_MAX_RETRIES="1")  # fmt: skip  (live: 5 retries, 30 s)
    finally:
        dead.close()
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.splitlines() == [
        "edgellm: ModelScope: NetworkError; retrying…",
        "edgellm: ms://tests/hellaswag/README.md: cannot reach ModelScope and the file is not in the ModelScope "
        f"cache ({caches['modelscope']})",
    ]


@pytest.mark.parametrize(
    "ref",
    ["ms://tests/hellaswag", "ms://tests/hellaswag/../hs.txt", "ms://tests/hellaswag//etc/passwd",
     "ms://tests/hellaswag@../data/hs.txt", "ms://../hellaswag/hs.txt", "ms://tests/hellaswag/data\\hs.txt",
     "ms://tests/hellaswag/data/./hs.txt", "hf://tests/hellaswag/data/"],
)  # fmt: skip
def test_dataset_refs_stay_inside_the_repo(ref, capsys):
    code, out, err = run_cli(capsys, "eval", str(fixtures.smollm2_gguf()), "--hellaswag", ref)
    assert code == 2 and err.count("\n") == 1 and f"not a dataset file: {ref!r}" in err


def test_dataset_refs_name_their_hub():
    assert parse("modelscope://a/b@v2/x/y.txt") == DatasetRef("modelscope", "a/b", "v2", "x/y.txt")
    assert parse("ms://datasets/a/b/y.txt") == DatasetRef("modelscope", "a/b", None, "y.txt")
    assert parse("hf://datasets/a/b/y.txt") == DatasetRef("hf", "a/b", None, "y.txt")
