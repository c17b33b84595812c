"""The manifest's numbers agree with the files, read independently with gguf-py's GGUFReader."""

from __future__ import annotations

import hashlib
import json
import re

import fixtures
import numpy as np
import pytest
from gguf import GGUFReader

from edgellm.errors import EdgeError
from edgellm.store.manifest import FILENAME, SCHEMA, VERSION, Manifest
from edgellm.store.package import PackageOptions, build_package
from edgellm.quantize.levels import parse_levels


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("manifest") / "pkg"
    build_package(fixtures.smollm2_f16_gguf(), out, PackageOptions(levels=parse_levels("Q8_0,Q4_K_M"), command="x"))
    return out


def _field(reader: GGUFReader, key: str):
    f = reader.fields[key]
    part = f.parts[f.data[0]]
    return bytes(part).decode() if f.types[0].name == "STRING" else part[0]


@pytest.mark.slow
def test_numbers_agree_with_the_files(package):
    m = Manifest.load(package)
    assert [f.level for f in m.files] == ["Q8_0", "Q4_K_M"]  # a GGUF base stays outside the package
    for f in m.files:
        path = package / f.file
        r = GGUFReader(path)
        assert f.bytes == path.stat().st_size
        assert f.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        n_params = sum(int(t.n_elements) for t in r.tensors)
        n_bytes = sum(int(t.n_bytes) for t in r.tensors)
        assert f.bits_per_weight == pytest.approx(8 * n_bytes / n_params, abs=1e-4)
        per_layer = np.zeros(m.model.n_layers, dtype=np.int64)
        outside = 0
        for t in r.tensors:
            mm = re.match(r"blk\.(\d+)\.", t.name)
            if mm:
                per_layer[int(mm.group(1))] += int(t.n_bytes)
            else:
                outside += int(t.n_bytes)
        assert f.layer_bytes == per_layer.tolist() and f.non_layer_bytes == outside
        assert sum(f.layer_bytes) + f.non_layer_bytes == n_bytes
        assert m.model.n_params == n_params
        arch = _field(r, "general.architecture")
        assert m.model.arch == arch == "llama"
        assert m.model.n_layers == _field(r, f"{arch}.block_count") == 30
        assert m.model.n_head == _field(r, f"{arch}.attention.head_count")
        assert m.model.n_head_kv == _field(r, f"{arch}.attention.head_count_kv")
        assert m.model.n_ctx_train == _field(r, f"{arch}.context_length")
        assert m.model.n_embd == _field(r, f"{arch}.embedding_length")
        assert m.model.head_dim_k == m.model.n_embd // m.model.n_head == 64
        assert m.model.n_vocab == len(r.fields["tokenizer.ggml.tokens"].data)
        assert m.model.chat_template == ("tokenizer.chat_template" in r.fields)


def test_round_trip_and_schema(package):
    data = json.loads((package / FILENAME).read_text())
    assert data["schema"] == SCHEMA and data["version"] == VERSION
    m = Manifest.from_dict(data)
    assert m.to_dict() == data
    assert Manifest.load(package).verify(package) == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"version": VERSION + 1}, f"manifest version {VERSION + 1} is not supported"),
        ({"schema": "something.else"}, "not an edgellm package manifest"),
    ],
)
def test_unknown_versions_are_refused(package, change, message):
    data = {**json.loads((package / FILENAME).read_text()), **change}
    with pytest.raises(EdgeError, match=message):
        Manifest.from_dict(data)


def test_missing_or_corrupt_manifest(tmp_path):
    with pytest.raises(EdgeError, match="no manifest.json in .*: not an edgellm package"):
        Manifest.load(tmp_path)
    (tmp_path / FILENAME).write_text("{ not json")
    with pytest.raises(EdgeError, match="corrupt .*manifest.json"):
        Manifest.load(tmp_path)
    (tmp_path / FILENAME).write_text(json.dumps({"schema": SCHEMA, "version": VERSION, "model": {}}))
    with pytest.raises(EdgeError, match="malformed manifest"):
        Manifest.load(tmp_path)


def test_verify_reports_missing_and_resized_files(package, tmp_path):
    m = Manifest.load(package)
    (tmp_path / m.files[0].file).write_bytes(b"GGUF")
    problems = {p.file: p.what for p in m.verify(tmp_path)}
    assert problems == {m.files[0].file: f"size 4 != manifest {m.files[0].bytes}", m.files[1].file: "missing"}
