"""Shared set-up for the hub and store tests: both hubs' caches in a tmp dir, and a local Hugging Face Hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import functools

import numpy as np
import pytest
from hubserver import Hub, HubServer, Repo, Sparse

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
    """A local Hugging Face Hub (see hubserver.py), online mode. Its LFS files are on Xet, whose CAS server
    cannot be reached: hf_xet tries once (its default is to retry for two minutes, per file)."""
    from huggingface_hub import constants

    hub = Hub()
    monkeypatch.setenv("HF_XET_CLIENT_RETRY_MAX_ATTEMPTS", "1")  # read when the process's Xet session starts
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


def edgellm_cli(*args: str, endpoint: str | None = None, modelscope: str | None = None, **env: str):
    """The installed `edgellm` in a subprocess, as a terminal shows it: everything it writes to stderr, log
    records of the libraries included. `endpoint`/`modelscope`: the hub URLs it talks to (the caches and
    the store come from the test's environment)."""
    extra = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", **env}
    extra.update({"HF_ENDPOINT": endpoint} if endpoint else {})
    extra.update({"MODELSCOPE_ENDPOINT": modelscope} if modelscope else {})
    run_env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"} | extra
    exe = Path(sys.executable).parent / "edgellm"
    return subprocess.run([str(exe), *args], env=run_env, capture_output=True, text=True, timeout=600)


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


MiB = 1 << 20
# A GGUF repo as bartowski's are laid out: a float level, quantized levels, a split level in its own
# folder, the vision projector. Only Q4_1 is a real file (SmolLM2, 94 MiB): the others are listed at the
# sizes a bigger model's would have and are never downloaded by the tests that use them.
LEVELS_LISTED = {
    "SmolLM2-135M-Instruct-f16.gguf": 400 * MiB,
    "SmolLM2-135M-Instruct-Q8_0.gguf": 200 * MiB,
    "SmolLM2-135M-Instruct-Q2_K.gguf": 60 * MiB,
    "Q6_K/SmolLM2-135M-Instruct-Q6_K-00001-of-00002.gguf": 90 * MiB,
    "Q6_K/SmolLM2-135M-Instruct-Q6_K-00002-of-00002.gguf": 90 * MiB,
    "mmproj-SmolLM2-f16.gguf": 30 * MiB,
}
PROJECTOR = "mmproj-SmolLM2-f16.gguf"


def projector_bytes() -> bytes:
    """A real projector GGUF (the tiny Gemma 3 one llama.cpp's converter writes): pulls fetch it with a level."""
    import vision_fixtures

    return vision_fixtures.llamacpp_vision_reference()[1].read_bytes()


def levels_repo() -> Repo:
    files = {name: b"GGUF not downloaded " + name.encode() for name in LEVELS_LISTED}
    files |= {"SmolLM2-135M-Instruct-Q4_1.gguf": fixtures.smollm2_gguf().read_bytes(), "README.md": b"# gguf\n",
              PROJECTOR: projector_bytes()}
    return Repo(files=files, listed_sizes={k: v for k, v in LEVELS_LISTED.items() if k != PROJECTOR})


def machine_with_ram(monkeypatch, ram_mib: int) -> None:
    """Plan for a machine with this much free RAM and no GPU (the planner keeps 512 MiB and 5% free)."""
    from edgellm.plan import hardware

    monkeypatch.setattr(hardware, "detect", lambda: hardware.synthetic(ram=ram_mib * MiB))


def ram_for_budget(budget: int) -> int:
    """The free RAM (MiB, rounded up) whose planner budget is at least `budget` bytes (512 MiB and 5% kept free)."""
    return -(-int((budget + 512 * MiB) / 0.95) // MiB) + 1


def ram_needed(path: Path, n_ctx: int = 2048) -> int:
    """What the planner counts in RAM for the GGUF file `path` at `n_ctx` tokens on a CPU (its least)."""
    from edgellm.formats.gguf_info import read_gguf
    from edgellm.plan.memory import estimate

    return estimate(read_gguf(path), n_ctx).ram


def sparse_gguf(path: Path) -> Sparse:
    """A GGUF file on disk as the test hub serves a big one: its real header and size, zeros after."""
    from edgellm.formats.gguf_info import header_reader_class

    end = header_reader_class()(path, "r").data_offset
    with open(path, "rb") as f:
        return Sparse(f.read(end), Path(path).stat().st_size)


@functools.cache
def smollm2_levels() -> dict[str, Path]:
    """SmolLM2's levels as files: F16, Q8_0 and Q2_K from edgellm's package of it, and the real Q4_1."""
    pkg = fixtures.smollm2_package()
    return {"F16": pkg / "smollm2-hf-F16.gguf", "Q8_0": pkg / "smollm2-hf-Q8_0.gguf",
            "Q4_1": fixtures.smollm2_gguf(), "Q2_K": pkg / "smollm2-hf-Q2_K.gguf"}  # fmt: skip


def planned_levels_repo() -> Repo:
    """SmolLM2 as a GGUF repo whose levels all have real headers: Q4_1 whole (it can be downloaded), the others
    as Sparse (planned from, never downloaded), beside a vision projector and the card."""
    files = {f"SmolLM2-135M-Instruct-{lv}.gguf": sparse_gguf(p) for lv, p in smollm2_levels().items() if lv != "Q4_1"}
    files["SmolLM2-135M-Instruct-Q4_1.gguf"] = smollm2_levels()["Q4_1"].read_bytes()
    files |= {PROJECTOR: projector_bytes(), "README.md": b"# gguf\n"}
    return Repo(files=files)


LLAMA3_8B_LEVELS = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K")


@functools.cache
def _llama3_8b_files() -> dict[str, Sparse]:
    import tempfile

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for lv in LLAMA3_8B_LEVELS:
            path = fixtures.write_llama3_shaped_gguf(Path(tmp) / f"Llama-3-8B-Instruct-{lv}.gguf", "llama3-8b", lv)
            out[path.name] = sparse_gguf(path)  # a sparse file on disk: only the header is read
    return out


def llama3_8b_repo() -> Repo:
    """A repo of GGUF levels of a Llama-3-8B-shaped model (the real Llama 3 vocabulary: a 7.5 MiB header), as
    bartowski's are laid out, none of it downloadable: the files are Sparse."""
    return Repo(files={**_llama3_8b_files(), "README.md": b"# Llama 3 8B\n"})


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
