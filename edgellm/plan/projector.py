"""A vision model's projector in the plan: where its weights go and what a picture costs in the context.

llama.cpp's mtmd puts the projector on the GPU when there is one (`use_gpu`), so the plan reserves its
weights in VRAM first when they fit there, else in RAM, before the text model's layers are placed.

The tokens one picture takes depend on the projector type: IMAGE_TOKENS holds one rule per type, from the
clip.* keys of the projector's header (and the picture's size, for types whose count grows with it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EdgeError
from ..formats.gguf_info import GGUFInfo, read_gguf
from ..fsutil import human_bytes

Meta = dict[str, Any]


def _count(meta: Meta, key: str, default: int | None = None) -> int:
    value = meta.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value < 1 << 20:
        raise EdgeError(f"the projector's {key} is {value!r}, not a positive whole number")
    return value


def _gemma3_tokens(meta: Meta, width: int, height: int) -> int:
    """Gemma 3: every picture is resized to image_size square; its patch grid is pooled by the scale factor
    per side (4 unless the header says otherwise): 256 tokens for the released models."""
    per_side = _count(meta, "clip.vision.image_size") // _count(meta, "clip.vision.patch_size")
    scale = _count(meta, "clip.vision.projector.scale_factor", 4)
    return (per_side // scale) ** 2


def _idefics3_tokens(meta: Meta, width: int, height: int) -> int:
    """SmolVLM / Idefics3: the picture is resized to a longest edge (its other side in proportion, made even),
    cut in image_size tiles (the last ones padded), and one whole-picture tile goes first; each tile's patch
    grid is pixel-shuffled by the scale factor per side. Without a size: the most, a square picture."""
    tile = _count(meta, "clip.vision.image_size")
    per_tile = (tile // _count(meta, "clip.vision.patch_size") // _count(meta, "clip.vision.projector.scale_factor", 2)) ** 2
    longest = _count(meta, "clip.vision.preproc_image_size", tile)
    width, height = (width, height) if width > 0 and height > 0 else (1, 1)
    short = int(longest / max(width, height) * min(width, height))
    short += short % 2
    tiles = -(-longest // tile) * -(-short // tile)
    return (tiles + 1) * per_tile


@dataclass(frozen=True)
class TokenRule:
    tokens: Callable[[Meta, int, int], int]  # (header, width, height) -> tokens of one picture
    fixed: bool  # the same for every picture (else the size decides; no size: the most)


# clip.projector_type -> how many tokens a picture takes
IMAGE_TOKENS: dict[str, TokenRule] = {
    "gemma3": TokenRule(_gemma3_tokens, fixed=True),
    "idefics3": TokenRule(_idefics3_tokens, fixed=False),
}


@dataclass(frozen=True)
class ProjectorPlan:
    path: Path
    projector_type: str
    file_type: str
    weights: int  # tensor bytes
    on_gpu: bool
    image_tokens: int | None  # of one picture, the most where the size decides (None: a type with no rule here)
    tokens_fixed: bool = True  # every picture costs image_tokens (else up to that many)

    def text(self) -> str:
        """"projector 812 MiB F16 on GPU; an image costs 256 tokens of context"."""
        cost = (f"an image costs {'' if self.tokens_fixed else 'up to '}{self.image_tokens} tokens of context"
                if self.image_tokens is not None else f"the image cost of a {self.projector_type} projector is not known here")
        return f"projector {human_bytes(self.weights)} {self.file_type} on {'GPU' if self.on_gpu else 'CPU'}; {cost}"

    def to_dict(self) -> dict:
        return {**self.__dict__, "path": str(self.path)}


def read_projector(path: Path) -> GGUFInfo:
    info = read_gguf(path)
    if info.metadata.get("general.type") != "mmproj" and info.arch != "clip":
        raise EdgeError(f"{path.name} is not a vision projector GGUF (general.type mmproj)")
    return info


def image_tokens(info: GGUFInfo, width: int = 0, height: int = 0) -> int | None:
    """The tokens one width x height picture takes with this projector, the most without a size (None: its
    type has no rule here)."""
    rule = IMAGE_TOKENS.get(str(info.metadata.get("clip.projector_type", "")))
    return None if rule is None else rule.tokens(info.metadata, width, height)


def tokens_fixed(info: GGUFInfo) -> bool:
    rule = IMAGE_TOKENS.get(str(info.metadata.get("clip.projector_type", "")))
    return rule is None or rule.fixed


def place_projector(path: Path, vram_budget: int, gpu: bool) -> ProjectorPlan:
    """The projector on the GPU when llama.cpp can offload and its weights fit the VRAM budget, else in RAM."""
    info = read_projector(path)
    weights = info.tensor_bytes
    return ProjectorPlan(
        path=path, projector_type=str(info.metadata.get("clip.projector_type", "unknown")),
        file_type=(info.file_type or "unknown").removeprefix("ALL_"), weights=weights,
        on_gpu=gpu and weights <= vram_budget, image_tokens=image_tokens(info), tokens_fixed=tokens_fixed(info),
    )
