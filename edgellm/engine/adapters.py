"""LoRA adapters at run time: `--lora FILE[:SCALE]` read and checked from the GGUF header before any model loads.

A GGUF LoRA adapter (`edgellm convert ADAPTER_DIR --base BASE`, or llama.cpp's convert_lora_to_gguf.py) holds
`<tensor>.lora_a` / `<tensor>.lora_b` pairs for tensors of one architecture. llama.cpp refuses an adapter
whose architecture, tensor names or shapes differ from the model's, with a log line; here the same checks
run first, so the refusal is one line naming the tensor, and the planner counts the adapter's memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError
from ..fsutil import human_bytes
from ..formats.gguf_info import GGUFInfo, TensorInfo, read_gguf

SCALE_LIMIT = 10.0  # |scale| beyond this is never a fine-tune's strength, rather a typo
PARTS = (".lora_a", ".lora_b")
IGNORED_SUFFIX = "_norm.weight"  # norms some exporters add; llama.cpp skips them too
EMBEDDINGS = "token_embd.weight"


@dataclass(frozen=True)
class LoraAdapter:
    """One adapter file, the scale it is applied at, and what its header says."""

    path: Path
    scale: float
    name: str
    arch: str
    alpha: float  # 0: llama.cpp applies the scale alone
    ranks: tuple[int, ...]  # the distinct ranks of its pairs
    n_bytes: int  # tensor data, what it adds to memory
    pairs: dict[str, tuple[TensorInfo, TensorInfo]]  # base tensor name -> (A, B)

    @property
    def label(self) -> str:
        """"my-tune" or "my-tune ×0.5": how commands name it."""
        return self.name if self.scale == 1.0 else f"{self.name} ×{self.scale:g}"

    def layer_bytes(self, n_layers: int) -> list[int]:
        """Bytes in each layer blk.N, then outside the layers (the last item): each goes where its base tensor goes."""
        out = [0] * (n_layers + 1)
        for a, b in self.pairs.values():
            layer = a.layer if a.layer is not None and a.layer < n_layers else n_layers
            out[layer] += a.n_bytes + b.n_bytes
        return out

    def to_dict(self) -> dict:
        return {"path": str(self.path), "scale": self.scale, "name": self.name, "arch": self.arch, "alpha": self.alpha,
                "ranks": list(self.ranks), "n_bytes": self.n_bytes, "n_tensors": 2 * len(self.pairs)}


def parse_lora(value: str) -> tuple[Path, float]:
    """`FILE` or `FILE:SCALE` -> (path, scale). A path that exists as given wins over a `:` in its name."""
    path, scale = value, 1.0
    if ":" in value and not Path(value).expanduser().exists():
        head, tail = value.rsplit(":", 1)
        try:
            scale = float(tail)
        except ValueError:
            raise UsageError(f"--lora {value}: the scale after ':' must be a number, not {tail!r}") from None
        path = head
    if not (math.isfinite(scale) and abs(scale) <= SCALE_LIMIT):
        raise UsageError(f"--lora {value}: the scale must be a number from {-SCALE_LIMIT:g} to {SCALE_LIMIT:g}")
    return Path(path).expanduser(), scale


def read_adapter(path: Path, scale: float = 1.0) -> LoraAdapter:
    """The adapter at `path`, its header checked; UsageError with one line for anything llama.cpp would refuse."""
    path = Path(path)
    if path.is_dir():
        hint = " (a PEFT adapter: convert it first with `edgellm convert {0} --base BASE -o {0}.gguf`)"
        peft = (path / "adapter_config.json").is_file()
        raise UsageError(f"--lora {path} is a folder, not a GGUF adapter file{hint.format(path) if peft else ''}")
    if not path.is_file():
        raise UsageError(f"--lora {path}: no such file")
    info = read_gguf(path)
    meta = info.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise UsageError(f"--lora {path.name} is not a LoRA adapter (general.type {meta.get('general.type')!r}, "
                         f"adapter.type {meta.get('adapter.type')!r})")
    alpha = meta.get("adapter.lora.alpha", 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
        raise UsageError(f"--lora {path.name}: adapter.lora.alpha is {alpha!r}, not a number of 0 or more")
    pairs = _pairs(info)
    ranks = tuple(sorted({b.shape[0] for name, (_, b) in pairs.items() if name != EMBEDDINGS}))
    n_bytes = sum(a.n_bytes + b.n_bytes for a, b in pairs.values())
    name = meta.get("general.name") if isinstance(meta.get("general.name"), str) else None
    return LoraAdapter(path, scale, name or path.stem, info.arch, float(alpha), ranks, n_bytes, pairs)


def _pairs(info: GGUFInfo) -> dict[str, tuple[TensorInfo, TensorInfo]]:
    parts: dict[str, dict[str, TensorInfo]] = {}
    for t in info.tensors:
        suffix = next((s for s in PARTS if t.name.endswith(s)), None)
        if suffix is None:
            if t.name.endswith(IGNORED_SUFFIX):
                continue
            raise UsageError(f"--lora {info.path.name}: tensor {t.name} is neither a .lora_a nor a .lora_b")
        if len(t.shape) != 2:
            raise UsageError(f"--lora {info.path.name}: tensor {t.name} has shape {list(t.shape)}, not a matrix")
        parts.setdefault(t.name.removesuffix(suffix), {})[suffix] = t
    pairs = {}
    for base, got in parts.items():
        if len(got) != 2:
            raise UsageError(f"--lora {info.path.name}: {base} has only {next(iter(got))[1:]}")
        a, b = got[".lora_a"], got[".lora_b"]
        # GGUF order: A is (in, rank), B (rank, out); the token embeddings' pair is stored the other way round
        if a.shape[1] != b.shape[0] and base != EMBEDDINGS:
            raise UsageError(f"--lora {info.path.name}: {base}'s A has rank {a.shape[1]} and its B {b.shape[0]}")
        pairs[base] = (a, b)
    if not pairs:
        raise UsageError(f"--lora {info.path.name} holds no LoRA tensors")
    return pairs


def check_fits(adapter: LoraAdapter, model: GGUFInfo) -> None:
    """UsageError unless llama.cpp can apply `adapter` to `model`: same architecture, every tensor there and of
    the shape the pair implies (token embeddings store A and B the other way round)."""
    what = f"the LoRA adapter {adapter.path.name} does not fit {model.path.name}"
    if adapter.arch != model.arch:
        raise UsageError(f"{what}: it is for {adapter.arch} models, this one is {model.arch}")
    shapes = {t.name: t.shape for t in model.tensors}
    for name, (a, b) in adapter.pairs.items():
        if name not in shapes:
            raise UsageError(f"{what}: it changes {name}, which the model does not have (made for another base?)")
        want = (b.shape[1], a.shape[1]) if name == EMBEDDINGS else (a.shape[0], b.shape[1])
        if tuple(shapes[name][:2]) != want:
            have = "x".join(map(str, shapes[name]))
            raise UsageError(f"{what}: {name} is {have} in the model, {'x'.join(map(str, want))} in the adapter "
                             "(made for another base?)")


def read_adapters(loras: Sequence[tuple[Path, float]], model: GGUFInfo) -> tuple[LoraAdapter, ...]:
    """The adapters (file, scale) read and each checked against `model` (any level of it: they share shapes)."""
    adapters = tuple(read_adapter(path, scale) for path, scale in loras)
    for adapter in adapters:
        check_fits(adapter, model)
    return adapters


def describe(adapters: tuple[LoraAdapter, ...]) -> str:
    """"LoRA my-tune ×0.5 (1.2 MiB)", for headers and stats lines."""
    return "LoRA " + ", ".join(f"{a.label} ({human_bytes(a.n_bytes)})" for a in adapters)
