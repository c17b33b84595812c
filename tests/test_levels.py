"""Quant levels: the table agrees with llama.cpp, quantizing goes through llama.cpp, bad input is refused."""

from __future__ import annotations

import json
import re
import shutil

import fixtures
import llama_cpp
import numpy as np
import pytest
from gguf import GGUFReader

from edgellm.cli import main
from edgellm.errors import EdgeError, UsageError
from edgellm.formats.gguf_info import read_gguf
from edgellm.quantize.imatrix import ImportanceMatrix
from edgellm.quantize.levels import ALIASES, DEFAULT_LEVELS, TABLE, parse_levels, quantize


@pytest.fixture(scope="module")
def base():
    return fixtures.smollm2_f16_gguf()


def test_table_matches_llama_cpp_ftypes():
    for lv in TABLE.values():
        const = "LLAMA_FTYPE_ALL_F32" if lv.name == "F32" else f"LLAMA_FTYPE_MOSTLY_{lv.name}"
        assert getattr(llama_cpp, const) == lv.ftype, lv.name
    assert set(DEFAULT_LEVELS) <= set(TABLE)
    assert all(target in TABLE for target in ALIASES.values())


def test_parse_levels_names_aliases_and_order():
    assert [lv.name for lv in parse_levels("q8_0, Q4_K,Q4_K_M ,q2_k")] == ["Q8_0", "Q4_K_M", "Q2_K"]
    with pytest.raises(UsageError, match=r"unknown quantization level 'Q7_K'; known: F32, F16"):
        parse_levels("Q8_0,Q7_K")
    with pytest.raises(UsageError, match="no quantization levels"):
        parse_levels(" , ")


def test_needs_imatrix_agrees_with_llama_cpp(base, tmp_path):
    """llama.cpp's dry run tells which levels it would refuse without an imatrix: the table agrees."""
    import ctypes

    from edgellm.quantize.levels import thread_log

    def refuses(level) -> bool:
        text: list[str] = []
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.dry_run = level.ftype, True
        with thread_log(lambda _lvl, t: text.append(t)):
            rc = llama_cpp.llama_model_quantize(str(base).encode(), str(tmp_path / "dry.gguf").encode(),
                                                ctypes.byref(params))
        # rc != 0: llama.cpp cannot make this level for this model at all (Q1_0 here)
        return rc == 0 and "will require an imatrix" in "".join(text)

    refused = {lv.name for lv in TABLE.values() if lv.name not in ("F32", "F16", "BF16") and refuses(lv)}
    # The table may be stricter than one model shows (SmolLM2's 576-wide rows move some tensors to other
    # types), never more lenient: every level llama.cpp refuses here is marked.
    assert refused <= {lv.name for lv in TABLE.values() if lv.needs_imatrix}
    assert {"IQ2_XXS", "IQ2_XS", "IQ1_S", "Q2_K_S"} <= refused
    assert not refused & {"Q2_K", "IQ3_XS", "IQ4_XS", "Q4_K_M", "Q8_0"}


@pytest.mark.parametrize("name", ["Q8_0", "Q4_K_M"])
def test_quantize_writes_the_level_and_it_generates(base, tmp_path, name):
    seen: list[tuple[int, int]] = []
    out = quantize(base, tmp_path / f"m-{name}.gguf", TABLE[name], on_tensor=lambda i, n, _t: seen.append((i, n)))
    info = read_gguf(out)
    assert info.file_type == name
    n_tensors = len(GGUFReader(out).tensors)
    assert seen[-1] == (n_tensors, n_tensors) and len(seen) == n_tensors  # one progress step per tensor
    assert [p.name for p in tmp_path.iterdir()] == [out.name]  # no temp file left beside it

    llm = llama_cpp.Llama(str(out), n_ctx=256, verbose=False)
    try:
        text = llm("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    finally:
        llm.close()
    assert text.strip()


def test_already_quantized_base_is_refused_unless_allowed(tmp_path):
    q41 = fixtures.smollm2_gguf()
    with pytest.raises(UsageError, match=r"already quantized \(Q4_1\).*--allow-requantize"):
        quantize(q41, tmp_path / "x.gguf", TABLE["Q4_0"])
    assert not any(tmp_path.iterdir())
    out = quantize(q41, tmp_path / "x.gguf", TABLE["Q4_0"], allow_requantize=True)
    assert read_gguf(out).file_type == "Q4_0"


def test_level_needing_imatrix_is_refused_without_one(base, tmp_path):
    with pytest.raises(UsageError, match=r"IQ2_XS need an importance matrix"):
        quantize(base, tmp_path / "x.gguf", TABLE["IQ2_XS"])


def test_llama_cpp_failure_leaves_nothing_behind(base, tmp_path):
    """An importance matrix with a wrong row length makes llama.cpp fail midway: no file, no temp file."""
    im = ImportanceMatrix(sums={"blk.3.ffn_down.weight": np.ones(7)}, counts={"blk.3.ffn_down.weight": 1},
                          chunks=1, n_ctx=16)
    with pytest.raises(EdgeError, match=r"to Q4_K_M failed: imatrix size 7 is different from tensor size"):
        quantize(base, tmp_path / "x.gguf", TABLE["Q4_K_M"], imatrix=im)
    assert not any(tmp_path.iterdir())


def test_not_gguf_is_refused(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 not a gguf at all")
    with pytest.raises(EdgeError, match="not a GGUF file"):
        quantize(bad, tmp_path / "x.gguf", TABLE["Q8_0"])


# --- CLI -------------------------------------------------------------------------------------------


def test_cli_quantize_json(base, tmp_path, capsys):
    src = tmp_path / "m-F16.gguf"
    shutil.copy(base, src)
    rc = main(["quantize", str(src), "--levels", "Q8_0,Q4_0", "-o", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err

    rows = json.loads(out)
    assert [r["level"] for r in rows] == ["Q8_0", "Q4_0"]
    for r in rows:
        assert read_gguf(r["file"]).file_type == r["level"]
        assert r["bytes"] == (tmp_path / f"m-{r['level']}.gguf").stat().st_size  # the base's type left out


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--levels", "Q9_9"], 2, r"edgellm: unknown quantization level 'Q9_9'"),
        (["--levels", "IQ1_S"], 2, r"edgellm: level\(s\) IQ1_S need an importance matrix"),
        ([], 2, r"edgellm: give a BASE.gguf and --levels"),
    ],
)
def test_cli_quantize_bad_input(base, tmp_path, capsys, args, code, message):
    rc = main(["quantize", str(base), "-o", str(tmp_path), *args])
    _, err = capsys.readouterr()
    assert rc == code
    assert len(err.strip().splitlines()) == 1
    assert re.match(message, err)
    assert not any(tmp_path.iterdir())


def test_cli_quantize_not_gguf_and_quantized_base(tmp_path, capsys):
    bad = tmp_path / "notes.gguf"
    bad.write_text("hello")
    assert main(["quantize", str(bad), "--levels", "Q8_0"]) == 1
    assert "edgellm: not a GGUF file" in capsys.readouterr().err
    rc = main(["quantize", str(fixtures.smollm2_gguf()), "--levels", "Q4_0", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 2 and "is already quantized (Q4_1)" in err


def test_cli_quantize_not_enough_disk(base, tmp_path, capsys, monkeypatch):
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
    rc = main(["quantize", str(base), "--levels", "Q8_0,Q2_K", "-o", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 3
    assert "edgellm: not enough disk space" in err and "2 quantized file(s)" in err
    assert not any(tmp_path.iterdir())


def test_cli_list_levels(capsys):
    assert main(["quantize", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("Q8_0", "Q4_K_M", "IQ4_XS", "IQ1_S", "TQ1_0"):
        assert name in out
