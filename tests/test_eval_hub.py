"""`edgellm eval --hellaswag hf://OWNER/NAME/PATH`: a dataset's task file through huggingface_hub, from the fake
Hub (tests/hubserver.py), into the cache; offline the cached copy serves, and a file never fetched is one line."""

from __future__ import annotations

import json

import eval_data
import fixtures
from conftest import run_cli
from hubserver import Repo
from hubtesting import caches, fake_hub, go_offline  # noqa: F401  (fixtures)

from edgellm.eval import tasks as T


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
