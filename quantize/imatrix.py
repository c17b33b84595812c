"""Importance matrix: how strongly each input column of each weight matrix is used on real text.

The quantizer spends its error budget where activations are small: for a weight W (out x in) fed by
activations x, it weights the rounding error of column j by mean(x_j^2) over the calibration tokens.

We run the real model through llama.cpp on the calibration text (chunks of n_ctx tokens, BOS first, as
`llama-perplexity` cuts them) with an eval callback (`cb_eval` in the context params): the scheduler asks
for each graph node whether we want it, and for every matrix multiply whose weight is a `blk.*` tensor we
read its activation input and add up the squares per column. The result goes straight to
`llama_model_quantize_params.imatrix` (an array of {name, data, size} ending with a NULL name; llama.cpp
copies it), and can be saved in llama.cpp's GGUF imatrix format so `llama-quantize --imatrix` reads it too.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgeError
from ..fsutil import atomic_output
from ..engine.quality import Evaluator

GGML_TYPE_F32 = 0
_ctypes_lock = threading.Lock()
_MAX_DIMS, _MAX_SRC, _MAX_OP_PARAMS, _MAX_NAME = 4, 10, 64, 64


class _GGMLTensor(ctypes.Structure):
    """The head of `struct ggml_tensor` (ggml.h), as far as we read it."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * _MAX_DIMS),
        ("nb", ctypes.c_size_t * _MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * _MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * _MAX_NAME),
    ]


def _ggml():
    """ggml functions we need, from the library llama-cpp-python ships (symbols resolve through libggml)."""
    from llama_cpp import _ggml as g

    lib = g.libggml
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    lib.ggml_nbytes.restype, lib.ggml_nbytes.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    return lib


@dataclass
class ImportanceMatrix:
    """Per weight tensor: sum of squared activations per input column, and how many tokens were summed."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)  # float64 while collecting
    counts: dict[str, int] = field(default_factory=dict)
    chunks: int = 0
    n_ctx: int = 0
    dataset: str = ""
    _keep: list = field(default_factory=list, repr=False)

    @property
    def tokens(self) -> int:
        return self.chunks * self.n_ctx

    def means(self) -> dict[str, np.ndarray]:
        """What the quantizer consumes: mean squared activation per column (float32, as llama.cpp divides)."""
        return {n: s.astype(np.float32) / np.float32(self.counts[n]) for n, s in self.sums.items() if self.counts[n]}

    def as_ctypes(self) -> ctypes.Array:
        """The NULL-terminated `llama_model_imatrix_data` array; built once (levels quantized on several
        threads share it), its buffers live as long as this object."""
        with _ctypes_lock:
            return self._keep[0] if self._keep else self._build_ctypes()

    def _build_ctypes(self) -> ctypes.Array:
        import llama_cpp

        means = self.means()
        arr = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
        self._keep = [arr]
        for i, (name, values) in enumerate(means.items()):
            values = np.ascontiguousarray(values, dtype=np.float32)
            cname = ctypes.create_string_buffer(name.encode())
            self._keep += [values, cname]
            arr[i].name = ctypes.cast(cname, ctypes.c_char_p)
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        arr[len(means)].name = None
        return arr

    def save(self, path: Path) -> Path:
        """Write llama.cpp's GGUF imatrix format (`<tensor>.in_sum2`, `<tensor>.counts`)."""
        from gguf import GGUFWriter

        with atomic_output(Path(path)) as tmp:
            w = GGUFWriter(tmp, arch="imatrix")
            w.add_type("imatrix")
            w.add_array("imatrix.datasets", [self.dataset])
            w.add_uint32("imatrix.chunk_count", self.chunks)
            w.add_uint32("imatrix.chunk_size", self.n_ctx)
            for name, s in sorted(self.sums.items()):
                w.add_tensor(f"{name}.in_sum2", s.astype(np.float32).reshape(1, -1))
                w.add_tensor(f"{name}.counts", np.array([[self.counts[name]]], dtype=np.float32))
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
            w.close()
        return Path(path)

    @classmethod
    def load(cls, path: Path) -> ImportanceMatrix:
        from gguf import GGUFReader

        try:
            r = GGUFReader(path)
        except Exception as exc:
            raise EdgeError(f"not an importance matrix file: {path} ({exc})") from exc
        im = cls(dataset=str(path.name))
        chunk = r.fields.get("imatrix.chunk_count")
        size = r.fields.get("imatrix.chunk_size")
        im.chunks = int(chunk.parts[chunk.data[0]][0]) if chunk else 0
        im.n_ctx = int(size.parts[size.data[0]][0]) if size else 0
        for t in r.tensors:
            if t.name.endswith(".in_sum2"):
                im.sums[t.name.removesuffix(".in_sum2")] = np.array(t.data, dtype=np.float64).reshape(-1)
            elif t.name.endswith(".counts"):
                im.counts[t.name.removesuffix(".counts")] = int(round(float(np.asarray(t.data).reshape(-1)[0])))
        if not im.sums or im.sums.keys() != im.counts.keys():
            raise EdgeError(f"not an importance matrix file (no matching sums and counts): {path}")
        return im


# Fewer tokens than this in a matmul are decode-sized steps; llama-imatrix skips them too.
_MIN_ROWS = 16


def compute_imatrix(
    model_path: str | Path,
    text: str,
    n_ctx: int = 512,
    min_chunks: int = 1,
    n_threads: int | None = None,
    dataset: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> ImportanceMatrix:
    """Run the model over `text` and collect the importance matrix of every `blk.*` weight."""
    import llama_cpp

    lib = _ggml()
    mul_mat = next(i for i in range(256) if lib.ggml_op_name(i) == b"MUL_MAT")
    im = ImportanceMatrix(n_ctx=n_ctx, dataset=dataset)
    failure: list[BaseException] = []

    def weight_of(t: _GGMLTensor) -> tuple[str, _GGMLTensor] | None:
        if t.op != mul_mat or not t.src[0] or not t.src[1]:
            return None
        w = _GGMLTensor.from_address(t.src[0])
        x = _GGMLTensor.from_address(t.src[1])
        name = w.name.decode(errors="replace")
        if not name.startswith("blk.") or x.type != GGML_TYPE_F32 or x.ne[1] < _MIN_ROWS:
            return None
        return name, x

    def collect(tensor_p: int, ask: bool, user_data: int) -> bool:
        try:
            found = weight_of(_GGMLTensor.from_address(tensor_p))
            if ask or found is None:
                return found is not None
            name, x = found
            nbytes = lib.ggml_nbytes(ctypes.addressof(x))
            raw = np.empty(nbytes // 4, dtype=np.float32)
            lib.ggml_backend_tensor_get(ctypes.addressof(x), raw.ctypes.data, 0, nbytes)  # works on any backend
            # x holds ne[1]*ne[2]*ne[3] rows of ne[0] floats; rows are contiguous (nb[1] == 4*ne[0]) in
            # the matmul inputs of dense models; strided views are read row by row.
            rows = np.lib.stride_tricks.as_strided(
                raw, shape=(x.ne[3], x.ne[2], x.ne[1], x.ne[0]), strides=(x.nb[3], x.nb[2], x.nb[1], x.nb[0])
            ).reshape(-1, x.ne[0])
            sq = np.einsum("ij,ij->j", rows, rows, dtype=np.float64)
            if name in im.sums:
                im.sums[name] += sq
                im.counts[name] += rows.shape[0]
            else:
                im.sums[name] = sq
                im.counts[name] = rows.shape[0]
            return True
        except BaseException as exc:  # never let an exception unwind into C
            failure.append(exc)
            return False

    cb = llama_cpp.ggml_backend_sched_eval_callback(collect)
    with Evaluator(model_path, n_ctx, n_threads, cb_eval=cb) as ev:
        chunks = ev.chunks(ev.tokenize(text), min_chunks=min_chunks, what="calibration text")
        for i, chunk in enumerate(chunks):
            # Ask for every position's logits: llama.cpp drops the rows it need not output before the
            # last layer's feed-forward, which would leave those weights without statistics.
            ev.eval_chunk(chunk, 0)
            if failure:
                raise failure[0]
            im.chunks = i + 1
            if progress:
                progress(i + 1, len(chunks))
    if not im.sums:
        raise EdgeError(f"no matrix multiplications of blk.* weights seen while running {Path(model_path).name}")
    return im
