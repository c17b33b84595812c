"""Chat formats for models whose GGUF carries no chat template (common for Gemma conversions).

A model answers sensibly only in the turn format it was trained on. Without a stored template the format is
inferred from the special tokens its vocabulary has: Gemma's `<start_of_turn>`, Llama 3's header tokens,
Phi-3's `<|user|>`, ChatML's `<|im_start|>`; a SentencePiece vocabulary with none of them gets the
`[INST]` format of Mistral and Llama 2. `--chat-template NAME` picks one by name, `--chat-template FILE`
reads a Jinja template.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

MAX_TEMPLATE_BYTES = 1 << 20  # a template file given on the command line; real ones are a few KiB

# The system message goes in front of the first user message where a format has no system turn.
_SYSTEM_FIRST = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set first = messages[0]['content'] + '\n\n' %}"
    "{% set turns = messages[1:] %}{% else %}{% set first = '' %}{% set turns = messages %}{% endif %}"
)


@dataclass(frozen=True)
class ChatFormat:
    name: str
    markers: tuple[str, ...]  # special tokens the vocabulary must have (each one token)
    source: str  # Jinja, rendered like a stored template
    tokenizer: str | None = None  # or: only for this kind of vocabulary ("spm": SentencePiece)


FORMATS: tuple[ChatFormat, ...] = (  # most specific first
    ChatFormat(
        "llama3",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
        "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
        "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
        "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}",
    ),
    ChatFormat(
        "gemma",
        ("<start_of_turn>", "<end_of_turn>"),
        "{{ bos_token }}" + _SYSTEM_FIRST
        + "{% for m in turns %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else 'user' }}\n"
        "{{ first if loop.first else '' }}{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
        "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    ),
    ChatFormat(
        "phi3",
        ("<|user|>", "<|assistant|>", "<|end|>"),
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}",
    ),
    ChatFormat(
        "chatml",
        ("<|im_start|>", "<|im_end|>"),
        "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}",
    ),
    ChatFormat(
        "mistral",
        (),
        "{{ bos_token }}" + _SYSTEM_FIRST
        + "{% for m in turns %}{% if m['role'] == 'assistant' %}{{ m['content'] | trim }}{{ eos_token }}"
        "{% else %}[INST] {{ first if loop.first else '' }}{{ m['content'] | trim }} [/INST]{% endif %}{% endfor %}",
        tokenizer="spm",
    ),
)
BY_NAME = {f.name: f for f in FORMATS}
FALLBACK = BY_NAME["chatml"]  # what most small instruct models were trained on


def infer(is_single_token: Callable[[str], bool], tokenizer: str | None) -> ChatFormat:
    """The format a model without a stored template most likely expects, from its vocabulary."""
    for f in FORMATS:
        if (f.tokenizer is None or f.tokenizer == tokenizer) and all(is_single_token(m) for m in f.markers):
            return f
    return FALLBACK


def choose(
    override: str | None, stored: str | None, is_single_token: Callable[[str], bool], tokenizer: str | None
) -> tuple[str, str]:
    """(Jinja source, where it came from) for a model: `override` (a format name or a template file), else the
    template stored in the GGUF, else the inferred format."""
    if override:
        if override in BY_NAME:
            return BY_NAME[override].source, f"{override} (--chat-template)"
        path = Path(override)
        if not path.is_file():
            raise UsageError(f"--chat-template {override}: neither a file nor a format ({', '.join(BY_NAME)})")
        if path.stat().st_size > MAX_TEMPLATE_BYTES:
            raise UsageError(f"--chat-template {override}: larger than {MAX_TEMPLATE_BYTES >> 10} KiB, not a chat template")
        try:
            return path.read_text(encoding="utf-8"), f"{path.name} (--chat-template)"
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--chat-template {override}: cannot read it as UTF-8 text: {exc}") from None
    if stored:
        return stored, "the model's own"
    f = infer(is_single_token, tokenizer)
    return f.source, f"{f.name} (the file has none; inferred from its vocabulary)"
