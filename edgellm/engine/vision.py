"""A vision model's projector (mmproj GGUF) through llama.cpp's mtmd library: pictures into the context.

The chat template is rendered with MARKER where each picture goes (as llama.cpp's server does: the projector
adds the model's own image tokens around it, such as Gemma 3's <start_of_image>). mtmd splits the prompt into
text chunks and image chunks; the text is evaluated as usual, each image is encoded by the projector and its
embeddings evaluated at the image's positions.

So that a chat's next turn reuses the KV cache, a prompt is also a list of keys, one per position: the token id
for text, and for an image a negative number drawn from its pixels, so the same picture matches itself.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import llama_cpp as L
import llama_cpp.mtmd_cpp as M

from . import llamacpp
from ..errors import EdgeError, UsageError
from ..formats.gguf_info import GGUFInfo, read_gguf
from .images import Picture

MARKER = M.mtmd_default_marker().decode()  # where a picture goes in the rendered prompt


@dataclass
class Chunk:
    start: int  # the first position it takes
    n_pos: int  # positions it takes
    tokens: list[int] | None = None  # a text chunk's tokens (None: an image)
    handle: object = field(default=None, repr=False)  # mtmd's chunk, owned by the prompt's chunk list


class MediaPrompt:
    """A tokenized prompt with pictures: its chunks and a key per position. Owns mtmd's chunk list (close it)."""

    def __init__(self, chunks_handle, chunks: list[Chunk], keys: list[int]):
        self._handle = chunks_handle
        self.chunks = chunks
        self.keys = keys
        self.n_images = sum(c.tokens is None for c in chunks)

    def close(self) -> None:
        if self._handle:
            M.mtmd_input_chunks_free(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()


def with_images(text: str, n_images: int) -> str:
    """A user message's text with the places of its n_images pictures (before the text, as chat apps send them)."""
    return MARKER * n_images + text


def check_projector(path: Path, model: GGUFInfo) -> None:
    """Refuse, before anything loads, a file that is not an image projector for `model`'s width."""
    meta = read_gguf(path).metadata
    if meta.get("general.architecture") != "clip":
        raise UsageError(f"{Path(path).name} is not a projector (mmproj) GGUF: its architecture is {meta.get('general.architecture')!r}")
    if not meta.get("clip.has_vision_encoder"):
        raise UsageError(f"{Path(path).name} is a projector without a vision encoder: it takes no images")
    width = model.metadata.get(f"{model.arch}.embedding_length")
    out = meta.get("clip.vision.projection_dim")
    if isinstance(width, int) and isinstance(out, int) and out != width:
        raise UsageError(f"{Path(path).name} projects images to width {out} but {model.path.name} has width {width}: not its projector")


def _image_key(pic: Picture) -> int:
    return -1 - int(pic.digest[:8], 16) % (1 << 31)


class Projector:
    """mtmd's context on a loaded text model. Not thread-safe, like the engine that holds it."""

    def __init__(self, path: Path, model, n_threads: int, use_gpu: bool):
        llamacpp.init()
        M.mtmd_log_set(llamacpp._on_log, ctypes.c_void_p(0))
        M.mtmd_helper_log_set(llamacpp._on_log, ctypes.c_void_p(0))
        p = M.mtmd_context_params_default()
        p.use_gpu = use_gpu
        p.n_threads = n_threads
        p.print_timings = False
        p.warmup = False
        p.media_marker = MARKER.encode()
        self.path = Path(path)
        with llamacpp.capture_log(), llamacpp.doing(f"loading the projector {self.path.name}"):
            self._ctx = M.mtmd_init_from_file(str(path).encode(), model, p)
        if not self._ctx:
            raise EdgeError(f"llama.cpp could not load the projector {self.path.name}: {llamacpp.last_error() or 'unknown error'}")
        if not M.mtmd_support_vision(self._ctx):
            self.close()
            raise UsageError(f"{self.path.name} is a projector for audio, not images")

    def tokenize(self, prompt: str, pictures: Sequence[Picture], add_bos: bool) -> MediaPrompt:
        """Split `prompt` (with MARKER once per picture, in order) into chunks; special tokens are parsed."""
        found = prompt.count(MARKER)
        if found != len(pictures):
            raise UsageError(f"the prompt has {found} places for images but {len(pictures)} were given")
        bitmaps = []
        chunks_handle = M.mtmd_input_chunks_init()
        try:
            for pic in pictures:
                data = (ctypes.c_uint8 * len(pic.rgb)).from_buffer_copy(pic.rgb)
                bm = M.mtmd_bitmap_init(pic.width, pic.height, data)
                if not bm:
                    raise EdgeError(f"llama.cpp could not take the picture {pic.name}")
                M.mtmd_bitmap_set_id(bm, pic.digest.encode())
                bitmaps.append(bm)
            text = prompt.encode("utf-8")
            inp = M.mtmd_input_text(text, len(text), add_bos, True)
            arr = (M.mtmd_bitmap_p_ctypes * max(1, len(bitmaps)))(*bitmaps)
            with llamacpp.capture_log():
                rc = M.mtmd_tokenize(self._ctx, chunks_handle, ctypes.byref(inp), arr, len(bitmaps))
            if rc != 0:
                raise EdgeError(f"llama.cpp could not tokenize the prompt with its images (code {rc}): {llamacpp.last_error()}")
        except BaseException:
            M.mtmd_input_chunks_free(chunks_handle)
            raise
        finally:
            for bm in bitmaps:
                M.mtmd_bitmap_free(bm)
        keys_of = {p.digest: _image_key(p) for p in pictures}
        chunks, keys = [], []
        for i in range(M.mtmd_input_chunks_size(chunks_handle)):
            c = M.mtmd_input_chunks_get(chunks_handle, i)
            if M.mtmd_input_chunk_get_type(c) == M.MTMD_INPUT_CHUNK_TYPE_TEXT:
                n = ctypes.c_size_t()
                ptr = M.mtmd_input_chunk_get_tokens_text(c, ctypes.byref(n))
                tokens = list(ptr[: n.value])
                chunks.append(Chunk(len(keys), len(tokens), tokens, c))
                keys.extend(tokens)
            else:
                n_pos = M.mtmd_input_chunk_get_n_pos(c)
                key = keys_of.get((M.mtmd_input_chunk_get_id(c) or b"").decode(), -1)
                chunks.append(Chunk(len(keys), n_pos, None, c))
                keys.extend([key] * n_pos)
        return MediaPrompt(chunks_handle, chunks, keys)

    def evaluate(self, lctx, chunk: Chunk, seq: int, n_batch: int, logits_last: bool) -> None:
        """Evaluate a chunk at positions chunk.start.. of sequence `seq`: an image is encoded by the projector and its
        embeddings evaluated."""
        new_n_past = L.llama_pos(0)
        with llamacpp.capture_log():
            rc = M.mtmd_helper_eval_chunk_single(
                self._ctx, lctx, chunk.handle, chunk.start, seq, n_batch, logits_last, ctypes.byref(new_n_past)
            )
        if rc != 0:
            raise EdgeError(f"llama.cpp failed to evaluate {'an image' if chunk.tokens is None else 'the prompt'} (code {rc}): {llamacpp.last_error()}")

    def close(self) -> None:
        if self._ctx:
            M.mtmd_free(self._ctx)
            self._ctx = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
