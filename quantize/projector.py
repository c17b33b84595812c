"""A vision checkpoint's image encoder and projection into the text model -> the projector GGUF ("mmproj")
that llama.cpp's mtmd loads beside the text model, streamed tensor by tensor like the text model.

    convert_projector("gemma-3-4b-it/", "mmproj-gemma-3-4b-it-F16.gguf", "f16")

Adding a vision family is adding a PROJECTORS row: where its tensors live, which of them keep a float type,
and the clip.* metadata its projector type reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gguf

from edgellm.errors import EdgeError, UsageError
from edgellm.fsutil import ensure_dir_for

from .checkpoint import Checkpoint, open_checkpoint
from .convert import OUTTYPES, OutTensor, write_gguf

if TYPE_CHECKING:
    from hashlib import _Hash as Hash

Q = gguf.GGMLQuantizationType
PROJECTOR_TYPES = ("f16", "q8_0")
DEFAULT_PROJECTOR_TYPE = "f16"

Config = dict[str, Any]
Preprocessor = dict[str, Any]
MAX_BLOCKS = 1024  # encoder layers a config may name (the tensor table is built for each)


@dataclass(frozen=True)
class ProjectorSpec:
    """One vision family: its tensors, the ones llama.cpp keeps in a float type, and its clip.* metadata."""

    hf_arch: str
    projector_type: str  # clip.projector_type, as llama.cpp's clip code knows it
    tensors: re.Pattern  # the stored names of the encoder's and projection's tensors
    skipped: re.Pattern | None  # of those, the ones llama.cpp does not use
    renames: tuple[tuple[str, str], ...]  # stored name fixes before gguf's name map
    f16: re.Pattern | None  # always F16 (stored names)
    f32: re.Pattern  # always F32 (stored names)
    shifts: tuple[tuple[str, float], ...]  # GGUF name suffix -> value added (norms stored as w - 1)
    metadata: Callable[[Config, Preprocessor], list[tuple[str, Any]]]  # (whole config, preprocessor) -> keys
    shapes: Callable[[Config, int], dict[str, tuple[int, ...]]]  # every GGUF tensor -> its HF (row-major) shape
    vision_defaults: dict[str, Any] = field(default_factory=dict)  # vision settings some configs leave out


def _siglip_shapes(vision: Config) -> dict[str, tuple[int, ...]]:
    """A SigLIP encoder's tensors: patch and position embeddings, pre-norm blocks, a final norm."""
    h, ff, patch = _need(vision, "hidden_size"), _need(vision, "intermediate_size"), _need(vision, "patch_size")
    side = _need(vision, "image_size") // patch
    out = {"v.patch_embd.weight": (h, vision.get("num_channels", 3), patch, patch), "v.patch_embd.bias": (h,),
           "v.position_embd.weight": (side * side, h), "v.post_ln.weight": (h,), "v.post_ln.bias": (h,)}
    n_blocks = _need(vision, "num_hidden_layers")
    if n_blocks > MAX_BLOCKS:
        raise EdgeError(f"config.json's vision_config has {n_blocks} layers; more than {MAX_BLOCKS} is not a vision encoder")
    for i in range(n_blocks):
        blk = f"v.blk.{i}."
        for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
            out |= {blk + name + ".weight": (h, h), blk + name + ".bias": (h,)}
        for name in ("ln1", "ln2"):
            out |= {blk + name + ".weight": (h,), blk + name + ".bias": (h,)}
        out |= {blk + "ffn_up.weight": (ff, h), blk + "ffn_up.bias": (ff,), blk + "ffn_down.weight": (h, ff), blk + "ffn_down.bias": (h,)}
    return out


def _gemma3_shapes(config: Config, n_embd_text: int) -> dict[str, tuple[int, ...]]:
    vision = config["vision_config"]
    h = _need(vision, "hidden_size")
    return _siglip_shapes(vision) | {"mm.input_projection.weight": (h, n_embd_text), "mm.soft_emb_norm.weight": (h,)}


def _idefics3_scale(config: Config) -> int:
    return _need({"scale_factor": config.get("scale_factor", 2)}, "scale_factor", "config")


def _idefics3_shapes(config: Config, n_embd_text: int) -> dict[str, tuple[int, ...]]:
    """SigLIP, then a pixel shuffle (scale x scale patches side by side) and one projection to the text width."""
    vision = config["vision_config"]
    return _siglip_shapes(vision) | {"mm.model.fc.weight": (n_embd_text, _need(vision, "hidden_size") * _idefics3_scale(config) ** 2)}


def _idefics3_metadata(config: Config, pre: Preprocessor) -> list[tuple[str, Any]]:
    """Pictures are resized to a longest edge and cut in image_size tiles beside one whole-picture tile."""
    vision = config["vision_config"]
    size = pre.get("size")
    longest = size.get("longest_edge") if isinstance(size, dict) and "longest_edge" in size else vision.get("image_size")
    return [
        ("add_clip_projector_type", "idefics3"),
        ("add_vision_attention_layernorm_eps", _number(vision.get("layer_norm_eps", 1e-5), "layer_norm_eps")),
        ("add_vision_projector_scale_factor", _idefics3_scale(config)),
        ("add_vision_use_gelu", True),
        ("add_vision_preproc_image_size", _need({"longest_edge": longest}, "longest_edge", "preprocessor config's size")),
    ]


def _gemma3_metadata(config: Config, pre: Preprocessor) -> list[tuple[str, Any]]:
    """Gemma 3 pools the patch grid to mm_tokens_per_image tokens; llama.cpp assumes a pool of 4 per side and
    reads another one from the scale factor."""
    vision = config["vision_config"]
    tokens = pre.get("image_seq_length", 256)
    side = int(math.isqrt(tokens)) if _count(tokens) else 0
    scale = (_need(vision, "image_size") // _need(vision, "patch_size")) // side if side else 0
    out = [
        ("add_clip_projector_type", "gemma3"),
        ("add_vision_attention_layernorm_eps", _number(vision.get("layer_norm_eps", 1e-6), "layer_norm_eps")),
        ("add_vision_use_gelu", True),
    ]
    if scale > 0 and scale != 4:
        out.append(("add_vision_projector_scale_factor", scale))
    return out


PROJECTORS: dict[str, ProjectorSpec] = {
    p.hf_arch: p
    for p in (
        ProjectorSpec(
            "Gemma3ForConditionalGeneration", "gemma3",
            tensors=re.compile(r"^(model\.)?(multi_modal_projector|vision_tower|multimodal_projector|vision_model)\."),
            skipped=re.compile(r"vision_model\.head\."),  # an unused pooling head some exports keep
            renames=(("_weight", ".weight"), ("model.vision_tower.", "vision_tower."), ("model.multi_modal_projector.", "multi_modal_projector.")),
            f16=re.compile(r"input_projection"),
            f32=re.compile(r"\.embeddings\."),
            shifts=(("soft_emb_norm.weight", 1.0),),
            metadata=_gemma3_metadata,
            shapes=_gemma3_shapes,
        ),
        *(ProjectorSpec(
            arch, "idefics3",
            tensors=re.compile(r"^model\.(vision_model|connector)\."),
            skipped=None,
            renames=(),
            f16=None,
            f32=re.compile(r"\.embeddings\."),
            shifts=(),
            metadata=_idefics3_metadata,
            shapes=_idefics3_shapes,
            # SmolVLM2's configs leave these out (transformers' defaults)
            vision_defaults={"hidden_size": 1152, "num_attention_heads": 16, "intermediate_size": 3072},
        ) for arch in ("SmolVLMForConditionalGeneration", "Idefics3ForConditionalGeneration")),
    )
}


def known_projectors() -> str:
    return ", ".join(f"{p.projector_type} ({p.hf_arch})" for p in PROJECTORS.values())


def projector_spec(config: Config) -> ProjectorSpec | None:
    """The checkpoint's vision family; None for a text-only checkpoint. EdgeError for a vision part of a family
    this converter does not know."""
    if not isinstance(config.get("vision_config"), dict):
        return None
    arch = (config.get("architectures") or [config.get("model_type")])[0]
    spec = PROJECTORS.get(arch)
    if spec is None:
        raise EdgeError(
            f"the vision part of {arch} is of a type this converter does not know (it knows {known_projectors()}); "
            "--projector-type none converts the text model alone"
        )
    return spec


def check_projector_type(config: Config, requested: str | None) -> ProjectorSpec | None:
    """The projector to write for --projector-type `requested` (None: not given): the family's spec, or None
    when there is none to write. UsageError for a type given for a text-only checkpoint."""
    if requested == "none":
        return None
    spec = projector_spec(config)
    if spec is None and requested is not None:
        raise UsageError("--projector-type is for vision checkpoints, and this one has no vision_config")
    return spec


def projector_file_name(name: str, ptype: str) -> str:
    """mmproj-<name>-<TYPE>.gguf: the prefix llama.cpp's converter and hub repos use, the type as levels name it."""
    return f"mmproj-{name}-{ptype.upper()}.gguf"


@dataclass(frozen=True)
class ProjectorJob:
    """A projector ready to write: checked, described, no weight read yet."""

    src_dir: Path
    ptype: str  # f16 or q8_0
    kind: str  # clip.projector_type
    writer: gguf.GGUFWriter
    tensors: list[OutTensor]


def prepare_projector(src_dir: str | Path, ptype: str = DEFAULT_PROJECTOR_TYPE) -> ProjectorJob:
    """Check the vision checkpoint in `src_dir` and describe its projector GGUF at `ptype` (f16 or q8_0), so a
    bad vision part is refused before anything is written."""
    src_dir = Path(src_dir)
    if ptype not in PROJECTOR_TYPES:
        raise UsageError(f"unknown projector type {ptype!r}; choose one of {', '.join(PROJECTOR_TYPES)}")
    ckpt = open_checkpoint(src_dir)
    spec = projector_spec(ckpt.config)
    if spec is None:
        raise UsageError(f"{src_dir} is not a vision checkpoint (no vision_config)")
    writer, tensors = describe_projector(ckpt, spec, ptype, _preprocessor(src_dir))
    return ProjectorJob(src_dir, ptype, spec.projector_type, writer, tensors)


def write_projector(job: ProjectorJob, out_path: str | Path, progress: bool = True, digest: Hash | None = None) -> Path:
    out_path = Path(out_path)
    ensure_dir_for(out_path)
    return write_gguf(job.writer, job.tensors, out_path, 1 << 20, "projector GGUF file", progress, digest, "projector.tensor")


def convert_projector(src_dir: str | Path, out_path: str | Path, ptype: str = DEFAULT_PROJECTOR_TYPE,
                      progress: bool = True, digest: Hash | None = None) -> Path:
    """Write the projector GGUF of the vision checkpoint in `src_dir` to `out_path` at `ptype` (f16 or q8_0)."""
    return write_projector(prepare_projector(src_dir, ptype), out_path, progress, digest)


def describe_projector(ckpt: Checkpoint, spec: ProjectorSpec, ptype: str, pre: Preprocessor
                       ) -> tuple[gguf.GGUFWriter, list[OutTensor]]:
    """The projector's metadata (in a writer with no file yet) and its tensors, without reading a weight."""
    ftype, wtype = OUTTYPES[ptype]
    config = ckpt.config | {"vision_config": spec.vision_defaults | ckpt.config["vision_config"]}
    vision, text = config["vision_config"], config.get("text_config")
    if not isinstance(text, dict):
        raise EdgeError("config.json lacks the text model's settings (text_config)")
    n_blocks = _need(vision, "num_hidden_layers")
    expected = spec.shapes(config, _need(text, "hidden_size", "text_config"))
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, n_blocks)
    tensors = []
    for stored, entry in ckpt.tensors.items():
        if not spec.tensors.search(stored) or (spec.skipped and spec.skipped.search(stored)):
            continue
        name = stored
        for old, new in spec.renames:
            name = name.replace(old, new)
        mapped = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped in {t.name for t in tensors}:
            raise EdgeError(f"checkpoint has two vision tensors that become {mapped} (one is {stored})")
        if mapped not in expected:
            raise EdgeError(f"checkpoint has vision tensor {stored} that the {spec.projector_type} projector does not use")
        if tuple(entry.shape) != expected[mapped]:  # llama.cpp's clip code trusts the shapes it loads
            raise EdgeError(f"vision tensor {stored} has shape {list(entry.shape)} but config.json implies {list(expected[mapped])}")
        shift = next((v for suffix, v in spec.shifts if mapped.endswith(suffix)), 0.0)
        tensors.append(OutTensor(mapped, entry.shape, _qtype(spec, name, mapped, entry.shape, wtype), (entry,), 0, shift))
    missing = sorted(set(expected) - {t.name for t in tensors})
    if missing:
        raise EdgeError(f"checkpoint lacks the vision tensor that becomes {missing[0]} (the {spec.projector_type} projector needs "
                        f"{len(expected)}, {len(missing)} missing)")

    w = gguf.GGUFWriter(None, "clip")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(ckpt.folder.resolve().name)
    w.add_file_type(ftype)
    w.add_clip_has_vision_encoder(True)
    w.add_vision_projection_dim(_need(text, "hidden_size", "text_config"))
    w.add_vision_image_size(_need(vision, "image_size"))
    w.add_vision_patch_size(_need(vision, "patch_size"))
    w.add_vision_embedding_length(_need(vision, "hidden_size"))
    w.add_vision_feed_forward_length(_need(vision, "intermediate_size"))
    w.add_vision_block_count(n_blocks)
    w.add_vision_head_count(_need(vision, "num_attention_heads"))
    w.add_vision_image_mean(_channels(pre, "image_mean"))
    w.add_vision_image_std(_channels(pre, "image_std"))
    for writer, value in spec.metadata(config, pre):
        getattr(w, writer)(value)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    return w, tensors


def _qtype(spec: ProjectorSpec, stored: str, name: str, shape: tuple[int, ...], wtype: Q) -> Q:
    """The type llama.cpp's converter gives this tensor: norms, vectors, biases and position embeddings F32,
    the family's own float tensors, the patch embedding F16 only in an F16 file, Q8_0 on whole blocks only."""
    if len(shape) <= 1 or name.endswith("_norm.weight") or spec.f32.search(stored):
        return Q.F32
    if spec.f16 and spec.f16.search(stored):
        return Q.F16
    if name.endswith(".patch_embd.weight"):
        return Q.F16 if wtype == Q.F16 else Q.F32
    if name.startswith("v.position_embd") or not name.endswith(".weight"):
        return Q.F32
    if wtype == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16
    return wtype


def _preprocessor(folder: Path) -> Preprocessor:
    """preprocessor_config.json, overlaid by processor_config.json (its image_processor section lifted up), as
    llama.cpp's converter reads them."""
    out: Preprocessor = {}
    for name in ("preprocessor_config.json", "processor_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EdgeError(f"cannot read {path}: {exc}") from exc
        if not isinstance(cfg, dict):
            raise EdgeError(f"{path} is not a JSON object")
        lifted = cfg.get("image_processor")
        out |= cfg | (lifted if isinstance(lifted, dict) else {})
    return out


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 < v < 1 << 31


def _need(cfg: Config, key: str, where: str = "vision_config") -> int:
    value = cfg.get(key)
    if not _count(value):
        raise EdgeError(f"config.json's {where} lacks a positive whole {key} (got {value!r})")
    return value


def _number(v: Any, key: str) -> float:
    if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
        raise EdgeError(f"config.json's vision_config has a bad value for {key}: {v!r}")
    return float(v)


def _channels(pre: Preprocessor, key: str) -> list[float]:
    value = pre.get(key)
    ok = isinstance(value, list) and len(value) == 3
    if not (ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)):
        raise EdgeError(f"the preprocessor config (preprocessor_config.json or processor_config.json) needs {key} as 3 numbers, not {value!r}")
    return [float(v) for v in value]
