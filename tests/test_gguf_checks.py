"""Impossible hyper-parameters in a GGUF header are refused before llama.cpp sees them.

Each bad file is SmolLM2's real header with one value changed (tensor data left a hole: nothing here
reads it). The rules must refuse every one, naming the file, the key and the value, and must accept
every real file the tests have.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFValueType as T

from edgellm.errors import EdgeError
from edgellm.formats.gguf_checks import check
from edgellm.formats.gguf_info import read_gguf
from edgellm.store.models import resolve_model
from fixtures import (
    mistral_checkpoint,
    qwen2_checkpoint,
    smollm2_converted_gguf,
    smollm2_f16_gguf,
    smollm2_gguf,
    write_llama3_shaped_gguf,
)
from gguf_edit import copy_gguf, typed

NAN, INF = float("nan"), float("inf")

# case -> (changes to SmolLM2's header, the key the refusal names, the value it shows)
IMPOSSIBLE = {
    "no layers": ({"llama.block_count": 0}, "llama.block_count", "0"),
    "more layers than llama.cpp holds": ({"llama.block_count": 600}, "llama.block_count", "600"),
    "negative layers": ({"llama.block_count": typed(-1, T.INT32)}, "llama.block_count", "-1"),
    "layer count as text": ({"llama.block_count": typed("30", T.STRING)}, "llama.block_count", "'30'"),
    "no layer count": ({"llama.block_count": None}, "llama.block_count", "missing"),
    "NaN rms epsilon": ({"llama.attention.layer_norm_rms_epsilon": NAN}, "layer_norm_rms_epsilon", "nan"),
    "negative rms epsilon": ({"llama.attention.layer_norm_rms_epsilon": -1e-5}, "layer_norm_rms_epsilon", "-"),
    "infinite rms epsilon": ({"llama.attention.layer_norm_rms_epsilon": INF}, "layer_norm_rms_epsilon", "inf"),
    "more experts used than exist": (
        {"llama.expert_count": typed(4, T.UINT32), "llama.expert_used_count": typed(8, T.UINT32)},
        "llama.expert_used_count", "8",
    ),
    "experts used without experts": ({"llama.expert_used_count": typed(2, T.UINT32)}, "llama.expert_used_count", "2"),
    "experts but none used": (
        {"llama.expert_count": typed(8, T.UINT32), "llama.expert_used_count": typed(0, T.UINT32)},
        "llama.expert_used_count", "0",
    ),
    "more experts than llama.cpp holds": ({"llama.expert_count": typed(2000, T.UINT32)}, "llama.expert_count", "2000"),
    "no attention heads": ({"llama.attention.head_count": 0}, "llama.attention.head_count", "0"),
    "heads not dividing the embedding": ({"llama.attention.head_count": 7}, "llama.attention.head_count", "7"),
    "no kv heads": ({"llama.attention.head_count_kv": 0}, "llama.attention.head_count_kv", "0"),
    "kv heads not dividing the heads": ({"llama.attention.head_count_kv": 2}, "llama.attention.head_count_kv", "2"),
    "more kv heads than heads": ({"llama.attention.head_count_kv": 18}, "llama.attention.head_count_kv", "18"),
    "heads for 3 of 30 layers": ({"llama.attention.head_count": typed([9, 9, 9], T.ARRAY)}, "attention.head_count", "[9, 9, 9]"),
    "zero context": ({"llama.context_length": 0}, "llama.context_length", "0"),
    "absurd context": ({"llama.context_length": 2**32 - 1}, "llama.context_length", "4294967295"),
    "zero vocabulary": ({"llama.vocab_size": 0}, "llama.vocab_size", "0"),
    "zero embedding": ({"llama.embedding_length": 0}, "llama.embedding_length", "0"),
    "absurd embedding": ({"llama.embedding_length": 2**31}, "llama.embedding_length", "2147483648"),
    "zero key length": ({"llama.attention.key_length": typed(0, T.UINT32)}, "llama.attention.key_length", "0"),
    "unknown rope scaling": ({"llama.rope.scaling.type": typed("bogus", T.STRING)}, "llama.rope.scaling.type", "bogus"),
}

# Cases llama.cpp itself aborts on (GGML_ASSERT: the whole process dies): the reason these rules exist.
ABORTS_LLAMA_CPP = ["no layers", "more layers than llama.cpp holds", "NaN rms epsilon", "negative rms epsilon",
                    "more experts used than exist", "unknown rope scaling"]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("impossible")
    return {case: copy_gguf(smollm2_gguf(), folder / f"{i}.gguf", changes, data=False)
            for i, (case, (changes, _, _)) in enumerate(IMPOSSIBLE.items())}


@pytest.mark.parametrize("case", IMPOSSIBLE)
def test_impossible_values_are_refused_naming_file_key_and_value(case, bad_files):
    _, key, value = IMPOSSIBLE[case]
    path = bad_files[case]
    read_gguf(path)  # the header itself reads (inspect can show it) ...
    with pytest.raises(EdgeError) as exc:
        resolve_model(path)  # ... but nothing plans or loads it
    message = str(exc.value)
    assert str(path) in message and key in message and value in message, message
    assert "\n" not in message


def test_a_package_with_one_impossible_file_offers_the_others(tmp_path, bad_files):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m-Q4_1.gguf").symlink_to(smollm2_gguf())
    (pkg / "m-Q2_K.gguf").symlink_to(bad_files["no layers"])
    ref = resolve_model(pkg)
    assert [f.level for f in ref.files] == ["Q4_1"]
    assert len(ref.skipped) == 1 and "m-Q2_K.gguf: impossible header value llama.block_count = 0" in ref.skipped[0]
    (pkg / "m-Q4_1.gguf").unlink()  # nothing sound left: the reason, as before
    with pytest.raises(EdgeError, match="m-Q2_K.gguf: impossible header value llama.block_count = 0"):
        resolve_model(pkg)


LOAD_WITHOUT_CHECKS = """
import sys, llama_cpp as L
L.llama_backend_init()
model = L.llama_model_load_from_file(sys.argv[1].encode(), L.llama_model_default_params())
if not model:
    sys.exit(1)  # refused cleanly
cp = L.llama_context_default_params()
cp.n_ctx = 256
cp.n_threads = cp.n_threads_batch = 1  # an assert in one of several worker threads can hang instead of abort
ctx = L.llama_init_from_model(model, cp)
tok = (L.llama_token * 1)(1)
print("decode", L.llama_decode(ctx, L.llama_batch_get_one(tok, 1)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", ABORTS_LLAMA_CPP)
def test_llama_cpp_aborts_on_what_the_rules_refuse(case, bad_files):
    # If llama.cpp learns to refuse these cleanly, this fails and the rule may go.
    r = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_CHECKS, str(bad_files[case])], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == -6, (r.returncode, r.stderr[-1500:])  # SIGABRT
    assert "GGML_ASSERT" in r.stderr


def _converted(checkpoint: Path, out: Path) -> Path:
    from edgellm.quantize.convert import convert_checkpoint

    convert_checkpoint(checkpoint, out, outtype="f16", progress=False)
    return out


@pytest.mark.parametrize("make", [
    lambda tmp: smollm2_gguf(),
    lambda tmp: smollm2_f16_gguf(),
    lambda tmp: smollm2_converted_gguf("f32"),
    lambda tmp: write_llama3_shaped_gguf(tmp / "llama3-8b-Q4_K_M.gguf", "llama3-8b"),
    lambda tmp: write_llama3_shaped_gguf(tmp / "llama3-70b-Q4_K_M.gguf", "llama3-70b"),
    lambda tmp: _converted(mistral_checkpoint(), tmp / "mistral.gguf"),
    lambda tmp: _converted(qwen2_checkpoint(), tmp / "qwen2.gguf"),
], ids=["smollm2", "smollm2-f16", "smollm2-f32", "llama3-8b", "llama3-70b", "mistral", "qwen2"])
def test_real_files_pass(make, tmp_path):
    info = read_gguf(make(tmp_path))
    assert check(info) is info


def test_unchanged_copy_passes(tmp_path):
    # The copying itself changes nothing the rules look at.
    copy = copy_gguf(smollm2_gguf(), tmp_path / "copy.gguf", {}, data=False)
    assert check(read_gguf(copy)).n_layers == 30


def test_a_packages_importance_matrix_is_not_taken_for_a_level(tmp_path):
    # `package --imatrix` leaves imatrix.gguf beside the levels: a GGUF, but general.type "imatrix", no model.
    import numpy as np

    from edgellm.plan.hardware import synthetic
    from edgellm.plan.planner import make_plan
    from edgellm.quantize.imatrix import ImportanceMatrix

    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "SmolLM2-Q4_1.gguf").symlink_to(smollm2_gguf())
    ImportanceMatrix({"blk.0.attn_q.weight": np.ones(576)}, {"blk.0.attn_q.weight": 8}, 1, 8).save(pkg / "imatrix.gguf")
    ref = resolve_model(pkg)
    assert [f.path.name for f in ref.files] == ["SmolLM2-Q4_1.gguf"]
    assert make_plan(ref, synthetic(16 << 30, 0)).path.name == "SmolLM2-Q4_1.gguf"
