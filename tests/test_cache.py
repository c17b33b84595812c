"""The test data cache keeps what runs use: entries unused for a month and builds of killed runs go."""

from __future__ import annotations

import os
import time

import fixtures


def test_unused_entries_and_dead_builds_are_pruned(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLM_TEST_CACHE", str(tmp_path))
    old, fresh = tmp_path / "renamed-fixture", tmp_path / "smollm2-hf"
    for d in (old, fresh):
        d.mkdir()
        (d / "data.bin").write_bytes(b"x" * 1000)
    month_ago = time.time() - 31 * 86400
    os.utime(old, (month_ago, month_ago))
    dead = tmp_path / ".thing.building-999999999"  # a pid no process has
    dead.mkdir()
    building = tmp_path / f".other.building-{os.getpid()}"  # a live build
    building.mkdir()
    size, removed = fixtures.prune_cache()
    assert sorted(removed) == [".thing.building-999999999", "renamed-fixture"]
    assert fresh.is_dir() and building.is_dir() and not old.exists() and not dead.exists()
    assert size == (fresh / "data.bin").stat().st_blocks * 512  # what the disk holds (a sparse file counts its blocks)


def test_using_an_entry_marks_it_used(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLM_TEST_CACHE", str(tmp_path))
    built = fixtures._build_once("thing", lambda d: (d / "f").write_text("1"))
    month_ago = time.time() - 31 * 86400
    os.utime(built, (month_ago, month_ago))
    fixtures._build_once("thing", lambda d: (d / "f").write_text("2"))  # cached: not built again, but used now
    assert fixtures.prune_cache()[1] == [] and (built / "f").read_text() == "1"
