"""Reading a PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) and matching it to the
base model it was trained on.

PEFT, and the tools that save in its format (SWIFT, Unsloth, torchtune), store for each adapted matrix W
(out x in) two matrices: lora_A (rank x in) and lora_B (out x rank). The fine-tuned model computes
W + s * B @ A with s = lora_alpha / rank (lora_alpha / sqrt(rank) with use_rslora).

Both files are untrusted: the config's size and every value used are checked, the safetensors header is read
with the same bounds as a checkpoint's, and tensors are only located here (read later, one at a time).
Settings that change what the adapter computes in ways neither llama.cpp's LoRA nor a merge reproduces
(DoRA, other PEFT methods, trained whole layers) are refused with the reason.

    adapter = open_adapter("my-lora/")
    pairs = match(adapter, read_config(Path("Llama-3.2-1B-Instruct/")))
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from edgellm.errors import EdgeError, UsageError

from .arch import PlannedTensor, arch_for, check_config, read_hparams, weight_map
from .checkpoint import PICKLE_SUFFIXES, TensorEntry, read_json_object, read_safetensors_header

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20  # real configs are ~1-2 KiB
MAX_RANK = 1 << 16
MAX_ALPHA = 1e6
PREFIX = "base_model.model."  # PEFT's path to the wrapped model
A_SUFFIX, B_SUFFIX = ".lora_A.weight", ".lora_B.weight"


def _falsy(value: Any) -> bool:
    return not value


# adapter_config.json keys that change what the adapter computes beyond W + s * B @ A: accepted only with the
# value a plain LoRA has (empty, false or null), else refused with the reason.
UNSUPPORTED: dict[str, tuple[Callable[[Any], bool], str]] = {
    "use_dora": (_falsy, "it is a DoRA adapter (use_dora): DoRA rescales every weight by a trained magnitude, "
                         "which llama.cpp's LoRA does not apply"),
    "modules_to_save": (_falsy, "it saves whole trained copies of {value} (modules_to_save), which a LoRA adapter "
                                "cannot carry"),
    "trainable_token_indices": (_falsy, "it trains token embeddings (trainable_token_indices), which a LoRA adapter "
                                        "cannot carry"),
    "alpha_pattern": (_falsy, "it gives modules different alphas (alpha_pattern); llama.cpp takes one per adapter"),
    "bias": (lambda v: v in (None, "none"), "it trains biases (bias = {value!r}), which a LoRA adapter cannot carry"),
    "lora_bias": (_falsy, "it trains a bias on lora_B (lora_bias), which llama.cpp's LoRA does not apply"),
    "fan_in_fan_out": (_falsy, "its matrices are stored transposed (fan_in_fan_out, for GPT-2 style Conv1D layers)"),
    "target_parameters": (_falsy, "it adapts parameters rather than layers (target_parameters), as for stacked experts"),
    "layer_replication": (_falsy, "it replicates layers (layer_replication)"),
    "alora_invocation_tokens": (_falsy, "it is an activated LoRA (alora_invocation_tokens)"),
    "use_qalora": (_falsy, "it is a QA-LoRA adapter (use_qalora)"),
    "use_bdlora": (_falsy, "it is a block-diagonal LoRA (use_bdlora)"),
    "arrow_config": (_falsy, "it routes between several LoRAs (arrow_config)"),
    "kasa_config": (_falsy, "it is a KaSA adapter (kasa_config)"),
    "monteclora_config": (_falsy, "it is a MonteCLoRA adapter (monteclora_config)"),
    "velora_config": (_falsy, "it is a VeLoRA adapter (velora_config)"),
    "megatron_config": (_falsy, "it was made for Megatron's parallel layers (megatron_config)"),
}
# Keys that do not change the trained model: bookkeeping, how training initialised the matrices, and which
# modules got adapters (the tensors say that). r, lora_alpha, use_rslora and peft_type are read below.
KNOWN = {
    "peft_type", "r", "lora_alpha", "use_rslora", "base_model_name_or_path", "revision", "task_type",
    "inference_mode", "auto_mapping", "peft_version", "target_modules", "exclude_modules", "lora_dropout",
    "init_lora_weights", "layers_to_transform", "layers_pattern", "rank_pattern", "loftq_config", "eva_config",
    "corda_config", "lora_ga_config", "qalora_group_size", "megatron_core", "ensure_weight_tying",
}
# Tensor name endings of adapter parts a LoRA adapter GGUF cannot hold, and what they are.
OTHER_PARTS = {
    ".lora_embedding_A": "LoRA on the token embeddings",
    ".lora_embedding_B": "LoRA on the token embeddings",
    ".lora_magnitude_vector": "a DoRA magnitude",
    ".bias": "a trained bias",
}


@dataclass(frozen=True)
class LoraPair:
    """One adapted matrix: its name in the base (HF and GGUF) and where its A and B are stored."""

    target: PlannedTensor  # the base matrix: HF name, GGUF name, (out, in), Q/K row reordering
    a: TensorEntry  # (rank, in)
    b: TensorEntry  # (out, rank)

    @property
    def hf(self) -> str:
        return self.target.hf[0]

    @property
    def rank(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class PeftAdapter:
    folder: Path
    alpha: float
    rank: int  # the config's r (rank_pattern may give some modules another; each pair knows its own)
    rslora: bool  # scale by alpha / sqrt(rank) instead of alpha / rank
    base_class: str | None  # the HF architecture PEFT recorded for the base
    base_name: str | None  # base_model_name_or_path: a hub id or the folder it was trained from
    modules: dict[str, tuple[TensorEntry | None, TensorEntry | None]]  # HF weight name -> (A, B)

    @property
    def name(self) -> str:
        return self.folder.resolve().name

    @property
    def files(self) -> list[Path]:
        return [self.folder / CONFIG_FILE, self.folder / WEIGHTS_FILE]

    def scaling(self, rank: int) -> float:
        """What B @ A is multiplied by in the fine-tuned model (at adapter scale 1)."""
        return self.alpha / (math.sqrt(rank) if self.rslora else rank)

    def sha256(self) -> dict[str, str]:
        """sha256 of each of the adapter's files, by file name."""
        out = {}
        for path in self.files:
            h = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(8 << 20):
                    h.update(block)
            out[path.name] = h.hexdigest()
        return out


def is_adapter_folder(path: Path) -> bool:
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def open_adapter(folder: str | Path) -> PeftAdapter:
    """Read and check a PEFT LoRA folder's config and safetensors header; UsageError with one line on bad input."""
    folder = Path(folder)
    if not is_adapter_folder(folder):
        raise UsageError(f"not a PEFT adapter folder (no {CONFIG_FILE}): {folder}")
    config = read_json_object(folder / CONFIG_FILE, MAX_CONFIG_BYTES)
    rank, alpha, rslora = _check_config(config, folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
        if pickles:
            raise UsageError(f"refusing the pickle adapter {pickles[0]} in {folder}: loading a pickle can run arbitrary "
                             f"code; save the adapter as safetensors (PEFT's default)")
        raise UsageError(f"the adapter in {folder} has no {WEIGHTS_FILE}")
    try:
        entries = list(read_safetensors_header(weights))
    except EdgeError as exc:
        raise UsageError(f"the adapter {folder.name} is damaged: {exc}") from None
    mapping = config.get("auto_mapping")
    base_class = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    base_name = config.get("base_model_name_or_path")
    return PeftAdapter(
        folder=folder, alpha=alpha, rank=rank, rslora=rslora,
        base_class=base_class if isinstance(base_class, str) else None,
        base_name=base_name if isinstance(base_name, str) and base_name else None,
        modules=_modules(entries, folder.name),
    )


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_config(config: dict[str, Any], folder: Path) -> tuple[int, float, bool]:
    """(rank, alpha, rslora) of a plain LoRA config; UsageError naming what else it is."""
    what = f"cannot use the adapter {folder.name}"
    kind = config.get("peft_type")
    if kind != "LORA":
        raise UsageError(f"{what}: it is a {kind!r} PEFT adapter, and only plain LoRA (peft_type LORA) is supported")
    for key, (ok, why) in UNSUPPORTED.items():
        value = config.get(key)
        if not ok(value):
            raise UsageError(f"{what}: {why.format(value=value)}")
    unknown = sorted(k for k, v in config.items() if k not in KNOWN and k not in UNSUPPORTED and v)
    if unknown:
        raise UsageError(f"{what}: its config sets {', '.join(unknown)}, which edgellm does not know; "
                         "it may change what the adapter computes")
    rank, alpha, rslora = config.get("r"), config.get("lora_alpha"), config.get("use_rslora", False)
    if not (isinstance(rank, int) and not isinstance(rank, bool) and 0 < rank <= MAX_RANK):
        raise UsageError(f"{what}: r must be a whole number from 1 to {MAX_RANK}, not {rank!r}")
    # llama.cpp reads an alpha of 0 as "no alpha" (scale 1, not 0): only a positive one means the same in both.
    if not (_number(alpha) and 0 < alpha <= MAX_ALPHA):
        raise UsageError(f"{what}: lora_alpha must be a number above 0 and at most {MAX_ALPHA:g}, not {alpha!r}")
    if not isinstance(rslora, bool):
        raise UsageError(f"{what}: use_rslora must be true or false, not {rslora!r}")
    return rank, float(alpha), rslora


def _modules(entries: list[TensorEntry], name: str) -> dict[str, tuple[TensorEntry | None, TensorEntry | None]]:
    """The adapter's tensors grouped by the base weight they change: HF name -> (A, B)."""
    modules: dict[str, tuple[TensorEntry | None, TensorEntry | None]] = {}
    for e in entries:
        other = next((what for end, what in OTHER_PARTS.items() if e.name.endswith(end) or f"{end}." in e.name), None)
        if other:
            raise UsageError(f"cannot use the adapter {name}: it holds {other} ({e.name}), which a LoRA adapter GGUF "
                             "cannot carry")
        if not e.name.startswith(PREFIX) or not e.name.endswith((A_SUFFIX, B_SUFFIX)):
            raise UsageError(f"cannot use the adapter {name}: it holds {e.name}, which is not a LoRA A or B matrix "
                             "(a whole trained layer, as modules_to_save keeps?)")
        if len(e.shape) != 2 or not 0 < min(e.shape):
            raise UsageError(f"the adapter {name} is damaged: {e.name} has shape {list(e.shape)}, not a matrix")
        is_a = e.name.endswith(A_SUFFIX)
        weight = e.name[len(PREFIX) : -len(A_SUFFIX if is_a else B_SUFFIX)] + ".weight"
        a, b = modules.get(weight, (None, None))
        modules[weight] = (e, b) if is_a else (a, e)
    if not modules:
        raise UsageError(f"the adapter {name} holds no LoRA matrices")
    return modules


def match(adapter: PeftAdapter, base_config: dict[str, Any]) -> list[LoraPair]:
    """The adapter's matrices on the base whose config.json is `base_config`, in the base's tensor order.
    UsageError when the adapter was made for another model (architecture, names or shapes differ)."""
    arch = arch_for(base_config)
    h = read_hparams(base_config)
    check_config(arch, base_config, h)
    what = f"the adapter {adapter.name} does not fit this base"
    if adapter.base_class and adapter.base_class != arch.hf_arch:
        raise UsageError(f"{what}: it was trained on a {adapter.base_class}, the base is a {arch.hf_arch}")
    targets = weight_map(arch, h)
    for weight, (a, b) in adapter.modules.items():
        module = weight.removesuffix(".weight")
        if a is None or b is None:
            has, lacks = ("B", "A") if a is None else ("A", "B")
            raise UsageError(f"the adapter {adapter.name} is incomplete: {module} has lora_{has} but no lora_{lacks}")
        target = targets.get(weight)
        if target is None:
            raise UsageError(f"{what}: {_why_missing(weight, h.tied_embeddings)} ({arch.hf_arch})")
        out, inp = target.shape
        r = a.shape[0]
        if a.shape != (r, inp) or b.shape != (out, r) or r > MAX_RANK:
            raise UsageError(
                f"{what}: its {module} is {b.shape[0]}x{a.shape[1]} (rank {r} / {b.shape[1]}), the base's matrix "
                f"is {out}x{inp}; was it trained on another model?"
            )
    return [LoraPair(t, *adapter.modules[name]) for name, t in targets.items() if name in adapter.modules]


def _why_missing(weight: str, tied: bool) -> str:
    module = weight.removesuffix(".weight")
    if module.endswith("lm_head") and tied:
        return "it changes lm_head, which this base ties to its token embeddings"
    if ".experts." in module:
        return f"it changes {module}, one expert of a mixture-of-experts layer, which llama.cpp stores stacked"
    return f"it changes {module}, which the base has no matrix for"
