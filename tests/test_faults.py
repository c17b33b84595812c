"""Faults from outside: Ctrl-C while a model loads, SIGKILL at random moments of convert and package, a full disk.

Every run is the installed `edgellm` in its own process, stopped at a named pause point (edgellm/testhooks.py)
so the signal lands mid-work whatever the machine's speed.
"""

from __future__ import annotations

import os
import random
import shutil
import signal

import pytest

import fixtures
import pausing
from edgellm.errors import EdgeError
from edgellm.fsutil import exclusive_lock, room_problem
from edgellm.formats.gguf_info import read_gguf
from edgellm.store.manifest import Manifest

LEVELS = ("Q8_0", "Q4_K_M")


def test_ctrl_c_while_the_model_loads_stops_it():
    """SIGINT arrives while llama.cpp is inside the load (in its progress callback): exit 130, no reply."""
    proc = pausing.start_paused("engine.load", "run", fixtures.smollm2_gguf(), "-p", "Hi", "-n", "4", "--temp", "0")
    done = pausing.finish(proc, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "edgellm: interrupted"
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr
    assert done.stdout == ""


def test_room_problem_tells_a_full_disk_from_other_failures(tmp_path, monkeypatch):
    written = tmp_path / "level.gguf"
    written.write_bytes(b"\0" * 4096)
    assert room_problem(written, 1 << 20) is None  # room enough: something else failed
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=512))
    assert room_problem(written, 1 << 20) == "disk full, 512 B free and about 1.00 MiB more needed"


def test_a_folder_lock_has_one_holder_at_a_time(tmp_path):
    lock = tmp_path / ".edgellm-package.lock"
    with exclusive_lock(lock, "busy"):
        assert lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(EdgeError, match=rf"^busy \(pid {os.getpid()}\)$"):
            with exclusive_lock(lock, "busy"):  # another open file: flock refuses it even in this process
                pass
    assert not lock.exists()
    with exclusive_lock(lock, "busy"):  # free again
        pass


@pytest.mark.slow
def test_a_package_run_killed_holding_the_folder_lock_does_not_block_the_next(tmp_path):
    """A live run holds the folder: a second is refused naming its pid. Killed with SIGKILL, it leaves its lock
    file, but the flock on it died with the process: the same command goes on and finishes."""
    folder = tmp_path / "pkg"
    args = ["package", fixtures.smollm2_f16_gguf(), "-o", folder, "--levels", "Q8_0", "--jobs", "1"]
    first = pausing.start_paused("package.level:1", *args)
    second = pausing.edgellm(*args)
    assert second.returncode != 0
    assert second.stderr.strip() == f"edgellm: another edgellm package run is writing to {folder} (pid {first.pid})"
    killed = pausing.finish(first, signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    assert (folder / ".edgellm-package.lock").read_text() == f"{first.pid}\n"  # left behind, holding a dead pid
    done = pausing.edgellm(*args)
    assert done.returncode == 0, done.stderr[-2000:]
    _assert_complete_package(folder, ["Q8_0"])


def _assert_complete_package(folder, levels) -> None:
    verify = pausing.edgellm("verify", folder)
    assert verify.returncode == 0, verify.stderr
    assert {f.level for f in Manifest.load(folder).files} >= set(levels)
    assert (folder / "README.md").is_file()
    assert pausing.hidden_files(folder) == []


@pytest.mark.slow
def test_sigkill_at_random_moments_then_the_same_command_completes(tmp_path):
    """kill -9 of convert (4 times) and package (6 times) at random pause points; each time the same command,
    run again, completes and leaves nothing hidden behind. EDGELLM_FAULT_SEED replays a failing run."""
    seed = int(os.environ.get("EDGELLM_FAULT_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"EDGELLM_FAULT_SEED={seed}")
    rng = random.Random(seed)
    ckpt, base = fixtures.smollm2_checkpoint(), fixtures.smollm2_f16_gguf()
    n_tensors = len(read_gguf(base).tensors)

    for i in range(4):
        out = tmp_path / f"convert-{i}" / "out.gguf"
        out.parent.mkdir()
        args = ["convert", ckpt, "-o", out, "--outtype", "f16", "-q"]
        point = f"convert.tensor:{rng.randint(1, n_tensors - 1)}"
        print("convert killed at", point)
        killed = pausing.finish(pausing.start_paused(point, *args), signal.SIGKILL)
        assert killed.returncode == -signal.SIGKILL and pausing.hidden_files(out.parent), point  # mid-write
        done = pausing.edgellm(*args)
        assert done.returncode == 0, (point, done.stderr)
        assert pausing.hidden_files(out.parent) == [], point
        assert len(read_gguf(out).tensors) == n_tensors

    # (pause point, source): a checkpoint is converted first, a float GGUF is the base itself
    points = [
        lambda: (f"convert.tensor:{rng.randint(1, n_tensors - 1)}", ckpt),
        lambda: ("package.base", ckpt),
        lambda: (f"quantize.tensor:{rng.randint(1, n_tensors)}", base),
        lambda: (f"package.level:{rng.randint(1, len(LEVELS))}", base),
    ]
    for i in range(6):
        point, src = rng.choice(points)()
        levels = rng.sample(LEVELS, len(LEVELS))  # which level runs first
        folder = tmp_path / f"package-{i}"
        print("package", src.name, ",".join(levels), "killed at", point)
        args = ["package", src, "-o", folder, "--levels", ",".join(levels), "--base", "f16", "--jobs", "1"]
        killed = pausing.finish(pausing.start_paused(point, *args), signal.SIGKILL)
        assert killed.returncode == -signal.SIGKILL, point
        done = pausing.edgellm(*args)
        assert done.returncode == 0, (point, levels, done.stderr[-2000:])
        _assert_complete_package(folder, levels)


# --- records written beside each other: package, bench --save and eval --save share the package lock -------


def test_two_runs_recording_into_one_manifest_at_once_both_keep_their_records(tmp_path):
    """A bench --save and an eval --save that finish together: the second waits for the first and adds to
    what it wrote instead of overwriting it with the manifest it read before."""
    import threading

    from edgellm.store.manifest import updating

    pkg = fixtures.linked_smollm2_package(tmp_path)
    first_in, let_go = threading.Event(), threading.Event()

    def bench_like():
        with updating(pkg) as m:
            first_in.set()
            m.files[0].bench = {"tg_tps": 1.0}
            assert let_go.wait(60)

    def eval_like():
        with updating(pkg) as m:
            m.files[0].accuracy = {"hellaswag": {"accuracy": 0.5}}

    a = threading.Thread(target=bench_like)
    a.start()
    assert first_in.wait(60)
    b = threading.Thread(target=eval_like)
    b.start()
    b.join(0.5)
    assert b.is_alive(), "the second writer did not wait for the first"
    let_go.set()
    a.join(60)
    b.join(60)
    saved = Manifest.load(pkg).files[0]
    assert saved.bench == {"tg_tps": 1.0} and saved.accuracy == {"hellaswag": {"accuracy": 0.5}}
    assert pausing.hidden_files(pkg) == []  # the lock file is gone with its holder


def test_eval_save_killed_mid_run_leaves_the_manifest_and_card_as_they_were(tmp_path):
    import eval_data

    pkg = fixtures.linked_smollm2_package(tmp_path)
    before = {n: (pkg / n).read_bytes() for n in ("manifest.json", "README.md")}
    hs = eval_data.write_hellaswag(tmp_path / "hs.txt")
    args = ("eval", pkg, "--levels", "Q8_0", "--hellaswag", hs, "--limit", "4", "--save", "--threads", "1")
    done = pausing.finish(pausing.start_paused("eval.tasks:2", *args), signal.SIGKILL)
    assert done.returncode == -signal.SIGKILL
    assert {n: (pkg / n).read_bytes() for n in before} == before and pausing.hidden_files(pkg) == []
    done = pausing.edgellm(*args)  # the same command again completes and records
    assert done.returncode == 0, done.stderr
    assert Manifest.load(pkg).entry("Q8_0").accuracy["hellaswag"]["tasks"] == 4


def test_a_record_waiting_on_a_package_run_that_never_ends_gives_up_with_one_line(tmp_path, monkeypatch):
    from edgellm.fsutil import exclusive_lock
    from edgellm.store import manifest as manifest_mod

    pkg = fixtures.linked_smollm2_package(tmp_path)
    monkeypatch.setattr(manifest_mod, "RECORD_WAIT_S", 0.3)
    with exclusive_lock(pkg / manifest_mod.LOCK_FILE, "held by the test"):
        with pytest.raises(EdgeError, match=r"another edgellm run is writing to .*pkg \(pid \d+\)"):
            with manifest_mod.updating(pkg):
                pass
