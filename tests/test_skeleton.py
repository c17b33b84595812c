"""The CLI shell, one-line errors, atomic outputs and the GGUF header reader."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgellm import cli
from edgellm.errors import EdgeError, NotEnoughSpace
from edgellm.fsutil import atomic_output, ensure_free_space, human_bytes
from edgellm.formats.gguf_info import read_gguf
from fixtures import smollm2_gguf


def test_help_lists_every_command_without_importing_them(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out
    # Listing commands must not pull in llama.cpp or Textual.
    code = "import sys, edgellm.cli as c; c.main(['--help']); print('llama_cpp' in sys.modules, 'textual' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip().splitlines()[-1] == "False False"


def test_every_command_imports_and_has_help():
    for name in cli.COMMANDS:
        cmd = cli.cli.get_command(None, name)
        assert cmd is not None, name
        assert cmd.help or cmd.short_help, f"{name} has no help text"


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["no-such-command"]) != 0
    assert "No such command" in capsys.readouterr().err


def test_atomic_output_renames_only_on_success(tmp_path):
    final = tmp_path / "out.bin"
    with atomic_output(final) as tmp:
        tmp.write_bytes(b"data")
        assert not final.exists()
    assert final.read_bytes() == b"data"
    assert list(tmp_path.iterdir()) == [final]
    assert final.stat().st_mode & 0o777 == 0o666 & ~_current_umask()

    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "other.bin") as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == [final]


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_output_refuses_a_missing_folder(tmp_path):
    with pytest.raises(EdgeError, match="output folder does not exist"):
        with atomic_output(tmp_path / "nope" / "x.gguf"):
            pass


def test_free_space_check(tmp_path):
    ensure_free_space(tmp_path, 1)
    with pytest.raises(NotEnoughSpace, match="not enough disk space"):
        ensure_free_space(tmp_path, 1 << 60)
    assert human_bytes(1536) == "1.50 KiB"


def test_read_gguf_matches_llama_cpp():
    import llama_cpp

    path = smollm2_gguf()
    info = read_gguf(path)
    assert (info.arch, info.file_type, info.n_layers) == ("llama", "Q4_1", 30)
    assert (info.n_head, info.n_head_kv, info.head_dim_k) == (9, 3, 64)
    assert info.chat_template and "<|im_start|>" in info.chat_template

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    try:
        assert info.n_params == llama_cpp.llama_model_n_params(model)
        assert info.tensor_bytes == llama_cpp.llama_model_size(model)
        assert info.n_vocab == llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(model))
        buf = ctypes.create_string_buffer(64)
        llama_cpp.llama_model_meta_val_str(model, b"llama.context_length", buf, len(buf))
        assert info.n_ctx_train == int(buf.value)
    finally:
        llama_cpp.llama_model_free(model)
    assert sum(info.layer_bytes()) + info.non_layer_bytes == info.tensor_bytes


@pytest.mark.parametrize("content, message", [(b"", "not a GGUF"), (b"GGUF\x03\x00\x00\x00garbage", "corrupt GGUF")])
def test_read_gguf_rejects_bad_files(tmp_path, content, message):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(EdgeError, match=message):
        read_gguf(bad)
    with pytest.raises(EdgeError, match="no such file"):
        read_gguf(tmp_path / "missing.gguf")
