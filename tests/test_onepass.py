"""Levels made in one pass over the base are byte for byte what llama.cpp's own quantizer writes, level by level."""

from __future__ import annotations

import hashlib

import arch_fixtures
import fixtures
import numpy as np
import pytest
from gguf import GGUFReader

from edgellm.errors import EdgeError
from edgellm.quantize.convert import convert_checkpoint
from edgellm.quantize.imatrix import ImportanceMatrix
from edgellm.quantize.levels import TABLE, quantize
from edgellm.quantize.onepass import quantize_together, read_base

# Every kind of type llama.cpp's quantizer picks: K-quant mixes, legacy, non-linear, ternary, floats.
LEVELS = ["Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_L", "Q2_K", "IQ4_XS", "IQ4_NL", "IQ3_S", "Q5_1", "Q4_0",
          "TQ2_0", "F16", "BF16"]


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """SmolLM2 as F16 (576-wide rows: some tensors fall back to other types), and two mixtures of experts
    (stacked 3-D expert tensors) as F32 and BF16."""
    folder = tmp_path_factory.mktemp("bases")
    return {
        "smollm2-f16": fixtures.smollm2_f16_gguf(),
        "qwen3moe-f32": convert_checkpoint(arch_fixtures.CHECKPOINTS["qwen3moe"](), folder / "qwen3moe.gguf",
                                           outtype="f32", progress=False),
        "mixtral-bf16": convert_checkpoint(arch_fixtures.CHECKPOINTS["mixtral"](), folder / "mixtral.gguf",
                                           outtype="bf16", progress=False),
    }


def _same_as_llama_cpp(base, levels, folder, imatrix=None):
    ours = folder / "ours"
    ours.mkdir()
    seen = []
    shas = quantize_together(read_base(base), [(TABLE[lv], ours / f"{lv}.gguf") for lv in levels], imatrix=imatrix,
                             nthread=2, on_tensor=lambda lv, i, n: seen.append((lv, i, n)))
    n_tensors = len(GGUFReader(base).tensors)
    assert seen[-len(levels):] == [(lv, n_tensors, n_tensors) for lv in levels]
    assert sorted(p.name for p in ours.iterdir()) == sorted(f"{lv}.gguf" for lv in levels)  # no temp files
    for lv in levels:
        ref = quantize(base, folder / f"ref-{lv}.gguf", TABLE[lv], imatrix=imatrix)
        mine = (ours / f"{lv}.gguf").read_bytes()
        assert mine == ref.read_bytes(), lv
        assert shas[lv] == hashlib.sha256(mine).hexdigest()


@pytest.mark.parametrize("name", ["smollm2-f16", "qwen3moe-f32", "mixtral-bf16"])
def test_every_level_is_byte_identical_to_llama_cpp(bases, name, tmp_path):
    _same_as_llama_cpp(bases[name], LEVELS, tmp_path)


def _imatrix_for(base) -> ImportanceMatrix:
    """Positive importance weights for every quantized matrix (one row length per expert), as a run would give."""
    rng = np.random.default_rng(0)
    sums, counts = {}, {}
    for t in GGUFReader(base).tensors:
        if t.name.startswith("blk.") and len(t.shape) > 1:
            n_matrices = int(t.shape[2]) if len(t.shape) > 2 else 1
            sums[t.name] = rng.uniform(0.1, 4.0, int(t.shape[0]) * n_matrices)
            counts[t.name] = 3
    return ImportanceMatrix(sums=sums, counts=counts, chunks=1, n_ctx=16)


@pytest.mark.parametrize("name", ["smollm2-f16", "qwen3moe-f32"])
def test_levels_that_need_an_importance_matrix_use_it_as_llama_cpp_does(bases, name, tmp_path):
    """Each expert's slice of the matrix goes with that expert's rows, as in llama.cpp's quantizer."""
    _same_as_llama_cpp(bases[name], ["IQ2_XS", "IQ3_XXS", "Q4_K_M", "Q2_K_S"], tmp_path, _imatrix_for(bases[name]))


def test_importance_matrix_of_the_wrong_size_is_refused(bases, tmp_path):
    im = ImportanceMatrix(sums={"blk.3.ffn_down.weight": np.ones(7)}, counts={"blk.3.ffn_down.weight": 1},
                          chunks=1, n_ctx=16)
    with pytest.raises(EdgeError, match=r"imatrix size 7 is different from tensor size 1536 for blk.3.ffn_down"):
        quantize_together(read_base(bases["smollm2-f16"]), [(TABLE["Q4_K_M"], tmp_path / "x.gguf")], imatrix=im)
    assert not any(tmp_path.iterdir())


def test_weights_that_are_not_finite_are_refused_and_nothing_is_left(bases, tmp_path):
    """llama.cpp's quantizer refuses a base with a NaN weight, and so does this one, in one line."""
    base = tmp_path / "nan.gguf"
    base.write_bytes(bases["smollm2-f16"].read_bytes())
    t = next(t for t in GGUFReader(base).tensors if t.name == "blk.0.ffn_down.weight")
    with open(base, "r+b") as f:
        f.seek(t.data_offset)
        f.write(np.full(64, np.nan, dtype=np.float16).tobytes())
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(EdgeError, match=r"^blk.0.ffn_down.weight holds weights that are not finite"):
        quantize_together(read_base(base), [(TABLE["Q8_0"], out / "a.gguf"), (TABLE["Q4_K_M"], out / "b.gguf")])
    assert not any(out.iterdir())
    with pytest.raises(EdgeError, match="'blk.0.ffn_down.weight' has invalid data"):  # llama.cpp's own agrees
        quantize(base, out / "ref.gguf", TABLE["Q8_0"])


def test_a_quantized_base_is_left_to_llama_cpp():
    assert read_base(fixtures.smollm2_gguf()) is None  # Q4_1: only with --allow-requantize, through llama.cpp
