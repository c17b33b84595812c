"""Bad input to `edgellm convert`: one readable line, non-zero exit, nothing under the final name.

Also the input forms the converter accepts: transformers 4 and 5 configs, and pre-tokenizer structures.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

import fixtures
import pausing
from edgellm.cli import main
from edgellm.formats.gguf_info import read_gguf
from edgellm.quantize.arch import read_hparams
from edgellm.quantize.vocab import detect_pre


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path / "home"))


@pytest.fixture
def ckpt(tmp_path) -> Path:
    """A private copy of the tiny Mistral checkpoint to damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(fixtures.mistral_checkpoint(), dst)
    return dst


def run_cli(args, capsys) -> tuple[int, str]:
    rc = main(["convert", "-q", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return rc, err


def assert_failed(rc: int, err: str, pattern: str, out: Path) -> None:
    import re

    assert rc != 0
    assert len(err.splitlines()) == 1 and err.startswith("edgellm: "), err
    assert re.search(pattern, err), err
    assert "Traceback" not in err
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.*"))  # no temp file left behind


def test_missing_config(ckpt, tmp_path, capsys):
    (ckpt / "config.json").unlink()
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"missing config\.json", out)


def test_missing_tokenizer(ckpt, tmp_path, capsys):
    (ckpt / "tokenizer.model").unlink()
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"missing tokenizer.*tokenizer\.json.*tokenizer\.model", out)


def test_missing_weights(ckpt, tmp_path, capsys):
    (ckpt / "model.safetensors").unlink()
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"no weights in .*safetensors", out)


def test_missing_shard(tmp_path, capsys):
    dst = tmp_path / "qwen"
    shutil.copytree(fixtures.qwen2_checkpoint(), dst)
    next(dst.glob("model-00002-*.safetensors")).unlink()
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([dst, "-o", out], capsys), r"missing: model-00002", out)


def test_pickle_weights_refused(ckpt, tmp_path, capsys):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"refusing pickle weights \(pytorch_model\.bin\).*run arbitrary code", out)


def test_truncated_safetensors(ckpt, tmp_path, capsys):
    weights = ckpt / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 1000)
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"truncated safetensors file model\.safetensors", out)


def test_corrupt_safetensors_header(ckpt, tmp_path, capsys):
    weights = ckpt / "model.safetensors"
    with open(weights, "r+b") as f:
        f.seek(8)
        f.write(b"#garbage#")
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"corrupt safetensors file model\.safetensors", out)


def test_shape_disagrees_with_config(ckpt, tmp_path, capsys):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["intermediate_size"] = 128  # the weights have 160
    (ckpt / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"mlp\.gate_proj\.weight has shape \[160, 64\] but config\.json implies \[128, 64\]", out)


def test_unknown_architecture_lists_supported(ckpt, tmp_path, capsys):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architectures"] = ["GPTNeoXForCausalLM"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    out = tmp_path / "out.gguf"
    pattern = r"unsupported architecture GPTNeoXForCausalLM; supported: LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), pattern, out)


def test_missing_output_folder(ckpt, tmp_path, capsys):
    out = tmp_path / "no" / "such" / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"output folder does not exist", out)


def test_not_enough_free_space(ckpt, tmp_path, capsys, monkeypatch):
    """The free-space check runs before anything is written."""
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4096))
    out = tmp_path / "out.gguf"
    rc, err = run_cli([ckpt, "-o", out], capsys)
    assert rc == 3
    assert_failed(rc, err, r"not enough disk space .* for the GGUF file", out)


def test_disk_full_while_writing(ckpt, tmp_path, capsys, monkeypatch):
    """ENOSPC from the file system mid-write (the temp file's writes fail after 64 KiB)."""
    import builtins

    real_open = builtins.open

    class FullDisk:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(memoryview(data).cast("B"))
            if self.written > 64 << 10:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return FullDisk(f) if str(file).endswith(".partial") and "w" in mode else f

    monkeypatch.setattr(builtins, "open", fake_open)
    out = tmp_path / "out.gguf"
    rc, err = run_cli([ckpt, "-o", out], capsys)
    assert rc == 3
    assert_failed(rc, err, r"disk full while writing .*out\.gguf", out)


def test_ctrl_c_leaves_no_file(tmp_path):
    """SIGINT mid-write (after 17 of 272 tensors): exit 130, 'interrupted', no final file, no temp file."""
    out = tmp_path / "out.gguf"
    proc = pausing.start_paused("convert.tensor:17", "convert", fixtures.smollm2_checkpoint(), "-o", out,
                                "--outtype", "q8_0")
    assert list(tmp_path.glob(".out.gguf.*.partial")) and not out.exists()  # it is writing
    done = pausing.finish(proc, signal.SIGINT)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "edgellm: interrupted"
    assert "Traceback" not in done.stderr
    assert not out.exists() and not list(tmp_path.glob(".out.gguf.*"))


def test_killed_convert_leaves_a_temp_file_the_next_run_removes(tmp_path):
    """SIGKILL cannot be cleaned up after; the next run writing the same output removes what it left."""
    out = tmp_path / "out.gguf"
    args = ["convert", fixtures.smollm2_checkpoint(), "-o", out, "--outtype", "f16"]
    proc = pausing.start_paused("convert.tensor:40", *args)
    assert pausing.finish(proc, signal.SIGKILL).returncode == -signal.SIGKILL
    [stale] = tmp_path.glob(".out.gguf.*.partial")
    assert f".{proc.pid}." in stale.name  # the writer's pid is in the name
    done = pausing.edgellm(*args, "-q")
    assert done.returncode == 0, done.stderr
    assert pausing.hidden_files(tmp_path) == [] and out.is_file()


def test_a_live_writer_keeps_its_temp_file(tmp_path):
    """Two converts to one output: the second leaves the first's temp file alone (it is held, not stale);
    whichever finishes last wins, and nothing hidden is left."""
    out = tmp_path / "out.gguf"
    args = ["convert", fixtures.smollm2_checkpoint(), "-o", out, "--outtype", "f16", "-q"]
    first = pausing.start_paused("convert.tensor:40", *args)
    [held] = tmp_path.glob(".out.gguf.*.partial")
    second = pausing.edgellm(*args)
    assert second.returncode == 0, second.stderr
    assert held.exists() and out.is_file()
    done = pausing.finish(first)
    assert done.returncode == 0, done.stderr
    assert pausing.hidden_files(tmp_path) == []
    assert read_gguf(out).file_type == "F16"


def test_unknown_outtype_is_a_usage_error(ckpt, tmp_path, capsys):
    rc = main(["convert", str(ckpt), "-o", str(tmp_path / "o.gguf"), "--outtype", "q4_k"])
    assert rc == 2 and "q4_k" in capsys.readouterr().err


# --- accepted input forms --------------------------------------------------------------------------

BASE = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "vocab_size": 100}


def test_config_styles_transformers_4_and_5():
    v4 = read_hparams({**BASE, "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    v5 = read_hparams({**BASE, "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0}})
    old = read_hparams({**BASE, "rope_theta": 10000.0, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert v4 == v5
    assert (v4.rope_theta, v4.rope["rope_type"], v4.rope["factor"]) == (500000.0, "llama3", 8.0)
    assert (old.rope["rope_type"], old.rope["factor"]) == ("linear", 2.0)
    assert v4.head_dim == 16 and v4.n_head_kv == 4 and not v4.has_head_dim  # implied by hidden_size / heads
    assert read_hparams({**BASE, "head_dim": 32}).head_dim == 32
    assert read_hparams(BASE).rope == {"rope_type": "default", "rope_theta": 10000.0}


def test_pre_tokenizer_recognised_from_structure():
    llama3 = json.loads((fixtures.llama3_tokenizer_dir() / "tokenizer.json").read_text())
    qwen2 = json.loads((fixtures.qwen2_checkpoint() / "tokenizer.json").read_text())
    smollm = {
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            ],
        }
    }
    gpt2 = {"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}}
    assert [detect_pre(t) for t in (llama3, qwen2, smollm, gpt2)] == ["llama-bpe", "qwen2", "smollm", "gpt-2"]
    # an extended vocabulary keeps its structure, so it is still recognised
    llama3["added_tokens"].append({"id": 128256, "content": "<|my_tool|>", "special": True})
    assert detect_pre(llama3) == "llama-bpe"


def test_unknown_pre_tokenizer_is_refused(tmp_path, capsys):
    dst = tmp_path / "qwen"
    shutil.copytree(fixtures.qwen2_checkpoint(), dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    tok["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = r"\p{L}+|\s+"
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([dst, "-o", out], capsys), r"unrecognised BPE pre-tokenizer structure .*known structures: gpt-2, gpt-4o, llama-bpe, qwen2, smollm", out)


def test_architecture_from_model_type_and_default_output_name(ckpt, tmp_path, capsys, monkeypatch):
    """A config without `architectures` is matched by model_type; the default output is ./<folder>-<type>.gguf."""
    cfg = json.loads((ckpt / "config.json").read_text())
    del cfg["architectures"]
    (ckpt / "config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    assert main(["convert", "-q", str(ckpt)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "ckpt-f16.gguf").is_file()  # auto resolved to the stored precision


def test_unsupported_normalizer_is_refused(tmp_path, capsys):
    dst = tmp_path / "qwen"
    shutil.copytree(fixtures.qwen2_checkpoint(), dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    tok["normalizer"] = {"type": "Lowercase"}
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([dst, "-o", out], capsys), r"unsupported tokenizer normalizer Lowercase", out)


def test_untied_model_without_lm_head(tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    dst = tmp_path / "ckpt"
    shutil.copytree(fixtures.mistral_checkpoint(), dst)
    weights = load_file(dst / "model.safetensors")
    del weights["lm_head.weight"]
    save_file(weights, dst / "model.safetensors")
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([dst, "-o", out], capsys), r"checkpoint lacks tensor lm_head\.weight", out)


def test_prefers_hf_weights_over_mistral_consolidated(ckpt, tmp_path, capsys):
    """A Mistral repo's consolidated.safetensors (Mistral's own tensor names) sits beside the HF weights."""
    import numpy as np
    from safetensors.numpy import save_file

    save_file({"layers.0.attention.wq.weight": np.zeros((4, 4), np.float16)}, ckpt / "consolidated.safetensors")
    out = tmp_path / "out.gguf"
    assert main(["convert", "-q", str(ckpt), "-o", str(out)]) == 0
    assert out.is_file()


def test_chat_template_from_chat_template_json(ckpt, tmp_path):
    from edgellm.formats.gguf_info import read_gguf
    from edgellm.quantize.convert import convert_checkpoint

    template = (ckpt / "chat_template.jinja").read_text()
    (ckpt / "chat_template.jinja").unlink()
    (ckpt / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    out = convert_checkpoint(ckpt, tmp_path / "out.gguf", progress=False)
    assert read_gguf(out).chat_template == template == fixtures.MISTRAL_TEMPLATE


def test_unsupported_tensor_dtype(ckpt, tmp_path, capsys):
    import numpy as np
    from safetensors.numpy import load_file, save_file

    weights = load_file(ckpt / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"].astype(np.int64)
    save_file(weights, ckpt / "model.safetensors")
    out = tmp_path / "out.gguf"
    assert_failed(*run_cli([ckpt, "-o", out], capsys), r"tensor model\.norm\.weight in model\.safetensors has dtype I64; supported: F32, F16, BF16", out)
