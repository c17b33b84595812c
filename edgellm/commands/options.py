"""Option types the commands share, so each kind of value is checked one way wherever it is taken.

A bad value ends as one `edgellm: --option ...` line with exit code 2, like every other usage error
(click's own ranges would let nan through, and print a usage block instead).
"""

from __future__ import annotations

import math
import os
import re

import click

from ..errors import UsageError

GGML_MAX_N_THREADS = 512  # llama.cpp's thread pool holds no more (5000 hangs it, 100000 crashes it)
C_INT_MAX = 2**31 - 1  # llama.cpp takes counts as C ints


def max_threads() -> int:
    """The most CPU threads a command accepts: 4 per logical core, at least 64, at most llama.cpp's 512.

    More threads than cores only slows llama.cpp down (its threads wait for each other: 64 threads on
    2 cores decode at a twentieth of the speed of 1), so the bound is there to catch typos and stay
    inside what llama.cpp can run, while leaving room to try oversubscription on purpose."""
    return min(GGML_MAX_N_THREADS, max(64, 4 * (os.cpu_count() or 1)))


class Range(click.ParamType):
    """A finite number from `low` to `high` (`low` itself excluded when `low_open`)."""

    def __init__(self, kind: type, low: float, high: float, low_open: bool = False) -> None:
        self.kind, self.low, self.high, self.low_open = kind, low, high, low_open
        self.name = "integer" if kind is int else "number"

    def allows(self, v: float) -> bool:
        above = v > self.low if self.low_open else v >= self.low
        return math.isfinite(v) and above and v <= self.high

    def describe(self) -> str:
        """What is allowed, e.g. "a whole number from 1 to 64", "a number above 0 and at most 1"."""
        what = "a whole number" if self.kind is int else "a number"
        if self.high == C_INT_MAX:
            return f"{what} above {self.low:g}" if self.low_open else f"{what}, {self.low:g} or more"
        if self.low_open:
            return f"{what} above {self.low:g} and at most {self.high:g}"
        return f"{what} from {self.low:g} to {self.high:g}"

    def convert(self, value, param, ctx):
        try:
            v = self.kind(value)
        except (TypeError, ValueError):
            v = None
        if v is None or not self.allows(v):
            option = param.opts[-1] if param is not None and param.opts else "the value"
            raise UsageError(f"{option} must be {self.describe()}, not {value}")
        return v


class GpuLayers(Range):
    """`auto` (None: the planner decides) or a number of layers; more than the model has means all of them."""

    def __init__(self) -> None:
        super().__init__(int, 0, C_INT_MAX)
        self.name = "auto|n"

    def describe(self) -> str:
        return "auto or a whole number of layers, 0 or more"

    def convert(self, value, param, ctx):
        return None if value in (None, "auto") else super().convert(value, param, ctx)


THREADS = Range(int, 1, max_threads())
MIN_SPEED = Range(float, 0.0, 1e6)  # decode tokens/s; 0: the highest quality that fits
MIN_SPEED_HELP = "Decode tokens/s the chosen level must reach (default 10; 0 = the highest quality that fits)."
CONTEXT = Range(int, 256, C_INT_MAX)  # tokens; llama.cpp pads smaller contexts up to 256 anyway
GPU_LAYERS = GpuLayers()

# Sampling: outside these llama.cpp's samplers divide by zero, keep NaN logits or mean nothing.
TEMPERATURE = Range(float, 0.0, 5.0)  # 0: greedy
TOP_K = Range(int, 0, C_INT_MAX)  # 0: off; more than the vocabulary is the same as off
TOP_P = Range(float, 0.0, 1.0, low_open=True)  # 1: off
MIN_P = Range(float, 0.0, 1.0)  # 0: off
# 1: off. Past 10 every token seen lately is all but banned, never what anyone means (typo for 1.1?).
REPEAT_PENALTY = Range(float, 0.0, 10.0, low_open=True)


class ChatTemplate(click.ParamType):
    """A chat format by name (edgellm.engine.chat_formats) or a Jinja template file."""

    name = "format|file"

    def convert(self, value, param, ctx):
        from ..engine.chat_formats import BY_NAME

        if value in BY_NAME or os.path.isfile(value):
            return value
        raise UsageError(f"--chat-template must be a format ({', '.join(BY_NAME)}) or a template file, not {value}")


CHAT_TEMPLATE = ChatTemplate()
THINK_HELP = ("Switch a thinking model's reasoning on or off where its chat template has the switch (enable_thinking), "
              "or set a harmony template's reasoning_effort to high or low (GPT-OSS); default: the template's own choice.")
CHAT_TEMPLATE_HELP = "Chat format (llama3, gemma, phi3, chatml, mistral) or a Jinja file, instead of the model's own."


class Devices(click.ParamType):
    """`--device NAME[,NAME...]`: the GPUs to use, by ggml's device name (CUDA0, Vulkan1; `edgellm hw` lists them);
    `none`: the CPU alone."""

    name = "name,..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        names = tuple(n.strip() for n in str(value).split(",") if n.strip())
        if names in (("none",), ("cpu",), ("CPU",)):
            return ()
        bad = [n for n in names if not DEVICE_NAME.match(n)]
        if not names or bad or len(names) > 64:
            raise UsageError(f"--device takes device names as `edgellm hw` lists them (CUDA0, Vulkan1) or none, not {value}")
        return names


DEVICE_NAME = re.compile(r"^[A-Za-z][A-Za-z_-]{0,31}\d{0,4}$")
DEVICES = Devices()
DEVICE_HELP = "GPUs to use, as `edgellm hw` names them (CUDA0, Vulkan1, ...; comma-separated), or none for the CPU alone."


class Workers(click.ParamType):
    """`--rpc HOST:PORT[,HOST:PORT...]`: `edgellm worker`s to put the layers that do not fit here on."""

    name = "host:port,..."

    def convert(self, value, param, ctx):
        from ..engine.rpc import parse_workers

        return ",".join(w.endpoint for w in parse_workers(value))


WORKERS = Workers()
WORKERS_HELP = "edgellm workers (HOST:PORT,...) that take the layers that do not fit here (with --ngl N: the last N)."


class LoraFile(click.ParamType):
    """`FILE[:SCALE]`: a LoRA adapter and the scale it is applied at (1 when not given)."""

    name = "file[:scale]"

    def convert(self, value, param, ctx):
        from ..engine.adapters import parse_lora

        return value if isinstance(value, tuple) else parse_lora(value)


LORA = LoraFile()
LORA_HELP = ("A LoRA adapter GGUF (edgellm convert ADAPTER_DIR --base BASE) applied at SCALE (default 1, from -10 to 10); "
             "repeatable.")


# `--jobs` of package and quantize
levels_per_pass = click.option(
    "--jobs", type=Range(int, 0, 64), default=0, show_default=True,
    help="Levels made together in one pass over the base, where tensors they quantize alike are quantized once "
         "(0: all). Fewer per pass records each level sooner; all at once is fastest.")


class ByteSize(click.ParamType):
    """A size in bytes written as a number with K, M, G or T (powers of 1024): `40G`, `500M`."""

    name = "size"
    UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    PATTERN = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT])i?B?$", re.IGNORECASE)

    def convert(self, value, param, ctx):
        if isinstance(value, int):
            return value
        m = self.PATTERN.match(str(value).strip())
        size = int(float(m.group(1)) * self.UNITS[m.group(2).upper()]) if m else 0
        if size < self.UNITS["M"]:
            option = param.opts[-1] if param is not None and param.opts else "the value"
            raise UsageError(f"{option} must be a size of 1M or more, with a unit (K, M, G, T): 40G, 500M; not {value}")
        return size


BYTE_SIZE = ByteSize()


def draft_options(f):
    """`--draft`, `--draft-max`, `--draft-min`: speculative decoding (edgellm.engine.speculate)."""
    f = click.option("--draft-min", type=Range(int, 1, 64), default=1, show_default=True,
                     help="Fewest tokens guessed per step (fewer available: no guess).")(f)
    f = click.option("--draft-max", type=Range(int, 1, 64), default=16, show_default=True,
                     help="Most tokens guessed per step; the length follows the acceptance rate up to this.")(f)
    return click.option(
        "--draft", default=None, metavar="auto|ngram|MODEL|off",
        help="Speculative decoding: guess tokens with n-gram lookup in the text so far (ngram), a small model with the "
             "same vocabulary (MODEL), or auto (the smallest such model in the store, else ngram). The output is the "
             "model's own; speculation pauses itself while it does not pay. Default: what `edgellm tune --draft` "
             "found pays for the model here, else off.")(f)
