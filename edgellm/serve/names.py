"""The model this server serves, as the APIs that list and name models see it: the names it answers to and
what its GGUF says about it (family, parameters, level, size).

OpenAI's and Anthropic's clients may send any model name (editor plugins hard-code them) and reach the one
model served (serving the store, the name picks the model: `pool.py`). Ollama's clients send `name:tag` and expect an unknown name to be refused: the model answers to
its served name (`--alias`, else its own) and its own name, each also written as an Ollama name
("smollm2-135m-instruct"; the one /api/tags lists), each bare, as `name:latest` or `name:LEVEL`, in any
letter case.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..formats.gguf_info import read_gguf
from .errors import ApiError, bad_request

LATEST = "latest"  # the tag an Ollama name without one means
NOT_IN_NAMES = re.compile(r"[^a-z0-9_.:-]+")  # Ollama's names: lower-case letters, digits, '_', '.', '-' (':' before the tag)


@dataclass(frozen=True)
class ServedModel:
    name: str  # what clients see: `--alias`, else the model's own name
    names: tuple[str, ...]  # every name it answers to; the first is the one listed
    level: str  # quant level, e.g. "Q4_1"
    family: str  # the GGUF's architecture, e.g. "llama"
    n_params: int
    size: int  # bytes of the file (of every part, for a split one)
    digest: str  # sha256 of the file's path, size and modification time: names this file, is not its hash
    modified: float  # the file's modification time (Unix time)
    chat_template: str  # the GGUF's own (the server may use another: --chat-template)
    metadata: dict  # the GGUF's scalar metadata (arrays such as the vocabulary left out)
    path: str  # the file

    def parameter_size(self) -> str:
        """The parameter count as Ollama writes it: "135M", "8.0B"."""
        return f"{self.n_params / 1e9:.1f}B" if self.n_params >= 1e9 else f"{self.n_params / 1e6:.0f}M"

    def resolve(self, name, param: str = "model") -> str:
        """Check that `name` is one of this model's; an unknown one is a 404 listing the names there are."""
        if not isinstance(name, str) or not name.strip():
            raise bad_request(f"'{param}' is required: one of {', '.join(self.names)}", param)
        if name.lower() in (n.lower() for n in self.names):
            return name
        close = difflib.get_close_matches(name.lower(), [n.lower() for n in self.names], n=3, cutoff=0.0)
        shown = [n for c in close for n in self.names if n.lower() == c]
        raise ApiError(404, f"model '{name}' not found: this server has {', '.join(shown)}", "model_not_found", param)


def slug(name: str) -> str:
    """`name` as an Ollama name: "SmolLM2 135M Instruct" -> "smollm2-135m-instruct"."""
    return NOT_IN_NAMES.sub("-", name.lower()).strip("-") or "model"


def served_model(model_id: str, own_name: str, level: str, path: Path) -> ServedModel:
    st = os.stat(path)
    return _described(model_id, own_name, level, str(path), st.st_size, st.st_mtime)


@lru_cache(maxsize=64)  # a store's models, each read once
def _described(model_id: str, own_name: str, level: str, path: str, size: int, mtime: float) -> ServedModel:
    info = read_gguf(Path(path))
    bases = list(dict.fromkeys(n for n in (model_id, own_name) if n))
    names = []
    for base in [*(slug(b) for b in bases), *bases]:
        names += [base] if ":" in base else [f"{base}:{LATEST}", base, f"{base}:{level}"]
    scalars = {k: v for k, v in info.metadata.items() if isinstance(v, (str, int, float, bool))}
    return ServedModel(
        name=model_id,
        names=tuple(dict.fromkeys(names)),
        level=level,
        family=info.arch,
        n_params=info.n_params,
        size=info.file_size,  # of every part, for a model split in several files
        digest=hashlib.sha256(f"{path}\0{size}\0{mtime}".encode()).hexdigest(),
        modified=mtime,
        chat_template=info.chat_template or "",
        metadata=scalars,
        path=path,
    )
