"""Shared set-up for the hub and store tests: both hubs' caches in a tmp dir, and a local Hugging Face Hub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hubserver import Hub, HubServer, Repo

import fixtures


@pytest.fixture
def caches(tmp_path, monkeypatch):
    """Hugging Face and ModelScope caches under tmp_path, offline mode on (HF_HUB_OFFLINE=1)."""
    import modelscope_hub
    from huggingface_hub import constants

    hf_home, ms_cache = tmp_path / "hf", tmp_path / "modelscope"
    for var, value in {
        "HF_HOME": hf_home,
        "HF_HUB_CACHE": hf_home / "hub",
        "HF_HUB_OFFLINE": "1",
        "MODELSCOPE_CACHE": ms_cache,
        "MODELSCOPE_HOME": tmp_path / "modelscope-home",
    }.items():
        monkeypatch.setenv(var, str(value))
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "MODELSCOPE_API_TOKEN", "EDGELLM_HUB"):
        monkeypatch.delenv(var, raising=False)
    # huggingface_hub reads its environment once, at import: set what it read.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_home / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(hf_home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(hf_home / "stored_tokens"))
    modelscope_hub.set_default_config(None)  # re-read MODELSCOPE_CACHE
    yield {"hf": hf_home / "hub", "modelscope": ms_cache}
    modelscope_hub.set_default_config(None)


@pytest.fixture
def fake_hub(caches, monkeypatch):
    """A local Hugging Face Hub (see hubserver.py), online mode."""
    from huggingface_hub import constants

    hub = Hub()
    with HubServer(hub) as url:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
        yield hub


@pytest.fixture
def fake_modelscope(caches, monkeypatch):
    """A local ModelScope (see hubserver.py), online mode."""
    import modelscope_hub
    from huggingface_hub import constants

    hub = Hub()
    with HubServer(hub, modelscope=True) as url:
        monkeypatch.delenv("HF_HUB_OFFLINE")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("MODELSCOPE_ENDPOINT", url)
        modelscope_hub.set_default_config(None)
        yield hub


def go_offline(monkeypatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


def safetensors_bytes(seed: int, shape=(4, 8)) -> bytes:
    from safetensors.numpy import save

    rng = np.random.default_rng(seed)
    return save({f"model.layers.{seed}.mlp.up_proj.weight": rng.standard_normal(shape, dtype=np.float32)})


def checkpoint_files(sharded: bool = False) -> dict[str, bytes]:
    """A Llama-3-shaped repo as the hub holds it: what conversion needs plus what it must not fetch."""
    tok = fixtures.llama3_tokenizer_dir()
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 8, "vocab_size": 128256}
    files = {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": b"# tiny\n",
        "LICENSE": b"licence text\n",
        "config.json": json.dumps(config).encode(),
        "generation_config.json": b'{"bos_token_id": 128000}',
        "tokenizer.json": (tok / "tokenizer.json").read_bytes(),
        "tokenizer_config.json": (tok / "tokenizer_config.json").read_bytes(),
        "special_tokens_map.json": b"{}",
        "pytorch_model.bin": b"pickled torch weights",
        "original/consolidated.00.pth": b"meta weights",
        "original/params.json": b"{}",
        "original/tokenizer.model": b"tiktoken ranks",
    }
    if sharded:
        shards = {f"model-0000{i}-of-00002.safetensors": safetensors_bytes(i) for i in (1, 2)}
        index = {"metadata": {}, "weight_map": {f"w{i}": name for i, name in enumerate(shards)}}
        files |= shards | {"model.safetensors.index.json": json.dumps(index).encode()}
    else:
        files["model.safetensors"] = safetensors_bytes(0)
    return files


NEEDED = {
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "model.safetensors",
}


def gguf_repo() -> Repo:
    """A repo of ready-made GGUF files, named the hubs' way: the real SmolLM2 Q4_1."""
    data = fixtures.smollm2_gguf().read_bytes()
    return Repo(files={"SmolLM2-135M-Instruct-Q4_1.gguf": data, "README.md": b"# gguf\n"})


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
