"""LoRA adapters end to end, on real adapters `peft` makes on the SmolLM2 checkpoint (with non-zero B):
converted to GGUF (byte for byte what llama.cpp's convert_lora_to_gguf.py writes), applied by llama.cpp at run
time (against transformers + peft), merged into a package (against peft's merge_and_unload), through the
commands that take `--lora`, and every kind of bad input refused in one line before anything loads."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import arch_fixtures
import fixtures
from conftest import run_cli
from edgellm.formats.gguf_info import read_gguf
from fixtures import LORA_TARGETS, LORAS, llamacpp_reference_lora, peft_lora, smollm2_checkpoint, smollm2_converted_gguf, smollm2_lora

EDGELLM = str(Path(sys.executable).parent / "edgellm")
TEXT = "The capital of France is Paris. The capital of Germany is Berlin. Water boils at"
QUESTION = "Write a haiku about the sea."  # the adapter changes the reply to this one
COSINE = 0.99999  # llama.cpp at f32 against transformers at f32, per position
NAME = "smollm2-lora-plain"  # the plain adapter's name: its folder's, which its GGUF carries


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of `a` with the same row of `b`."""
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def adapter_gguf(tmp_path_factory) -> dict[str, Path]:
    """Each test adapter converted by `edgellm convert ADAPTER --base CHECKPOINT` (auto: f32, as stored)."""
    from edgellm.cli import main

    folder = tmp_path_factory.mktemp("adapters")
    out = {}
    for name in LORAS:
        out[name] = folder / f"{name}.gguf"
        assert main(["convert", str(smollm2_lora(name)), "--base", str(smollm2_checkpoint()), "-o", str(out[name]), "-q"]) == 0
    return out


# --- the adapter GGUF -------------------------------------------------------------------------------------


def convert_with_both(name: str, adapter: Path, base: Path, outtype: str, tmp_path: Path, ref_base: Path | None = None):
    """(edgellm's adapter GGUF, convert_lora_to_gguf.py's) for `adapter` trained on `base`."""
    from edgellm.quantize.checkpoint import read_config
    from edgellm.quantize.lora import write_adapter_gguf
    from edgellm.quantize.peft import open_adapter

    ours = write_adapter_gguf(open_adapter(adapter), read_config(base), tmp_path / "a.gguf", outtype)
    return ours, llamacpp_reference_lora(name, adapter, ref_base or base, outtype)


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "f16", "q8_0"])
def test_adapter_tensors_identical_to_llamacpp_converter(outtype, tmp_path):
    from test_convert import _fields, assert_same_tensors

    ours, ref = convert_with_both("smollm2-plain", smollm2_lora(), smollm2_checkpoint(), outtype, tmp_path)
    _, tensors = _fields(ours)
    _, ref_tensors = _fields(ref)
    assert len(ref_tensors) == 2 * 7 * 30  # A and B of 7 projections in 30 layers
    assert_same_tensors(tensors, ref_tensors)
    meta = read_gguf(ours).metadata
    ref_meta = read_gguf(ref).metadata
    for key in ("general.architecture", "general.type", "adapter.type", "adapter.lora.alpha"):
        assert meta[key] == ref_meta[key], key
    assert (meta["general.type"], meta["adapter.type"], meta["adapter.lora.alpha"]) == ("adapter", "lora", 16.0)


# The projections each architecture's adapters train: attention and MLP (Phi-3 fuses them; the experts of a
# mixture-of-experts layer are left out, as llama.cpp stores them stacked).
ARCH_TARGETS = {
    **{name: LORA_TARGETS for name in ("llama3", "mistral", "qwen2", "qwen3", "gemma2", "gemma3")},
    "phi3": ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
    **{name: ["q_proj", "k_proj", "v_proj", "o_proj"] for name in ("mixtral", "qwen3moe")},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ARCH_TARGETS))
def test_adapters_of_every_architecture_identical_to_llamacpp_converter(name, tmp_path):
    from test_convert import _fields, assert_same_tensors

    base = {**fixtures.CHECKPOINTS, **arch_fixtures.CHECKPOINTS}[name]()
    adapter = peft_lora(f"{name}-lora", base, ARCH_TARGETS[name], r=4, lora_alpha=8)
    # llama.cpp's converter needs `architectures`, which the Gemma 3 fixture leaves out as transformers 5 does
    ref_base = arch_fixtures.with_architectures(name, base, "Gemma3ForCausalLM") if name == "gemma3" else None
    ours, ref = convert_with_both(name, adapter, base, "f32", tmp_path, ref_base)
    assert_same_tensors(_fields(ours)[1], _fields(ref)[1])


def test_rslora_alpha_is_written_so_llamacpp_scales_as_peft(adapter_gguf):
    """rsLoRA scales B @ A by alpha / sqrt(rank); llama.cpp by alpha / rank: the file's alpha makes them equal."""
    rank, alpha = LORAS["rslora"]["r"], LORAS["rslora"]["lora_alpha"]
    written = read_gguf(adapter_gguf["rslora"]).metadata["adapter.lora.alpha"]
    assert written / rank == pytest.approx(alpha / rank**0.5)


# --- applied by llama.cpp, against transformers + peft ------------------------------------------------------


def hf_logits(tokens: list[int], adapter: str | None = None, merged: bool = False, scale: float = 1.0) -> np.ndarray:
    """transformers' logits at every position: the checkpoint alone, with a peft adapter, or merged into it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, smollm2_lora(adapter))
        for module in model.modules():  # the adapter's strength, as llama.cpp's scale sets it
            if isinstance(getattr(module, "scaling", None), dict):
                module.scaling = {k: v * scale for k, v in module.scaling.items()}
        if merged:
            model = model.merge_and_unload()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].numpy()


def llama_logits(path: Path, tokens: list[int], loras=()) -> np.ndarray:
    """llama.cpp's logits at every position, through edgellm's evaluator (which applies `loras`)."""
    from edgellm.engine.quality import Evaluator

    with Evaluator(path, n_ctx=256, n_threads=1, loras=loras) as ev:
        return ev.eval_chunk(np.asarray(tokens), 0).copy()


@pytest.fixture(scope="module")
def tokens() -> list[int]:
    from edgellm.engine.quality import Evaluator

    with Evaluator(smollm2_converted_gguf("f32"), n_ctx=256, n_threads=1) as ev:
        return ev.tokenize(TEXT).tolist()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(LORAS))
def test_llamacpp_with_the_adapter_matches_transformers_with_peft(name, adapter_gguf, tokens):
    base = smollm2_converted_gguf("f32")
    ours = llama_logits(base, tokens, [(adapter_gguf[name], 1.0)])
    theirs = hf_logits(tokens, name)
    assert cosines(ours, theirs).min() >= COSINE
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()
    # ... and the adapter matters: it moves the logits well beyond the f32 noise between the two
    plain = llama_logits(base, tokens)
    assert np.abs(ours - theirs).max() < 0.05 < 0.5 < np.abs(ours - plain).max()
    assert cosines(ours, plain).min() < 0.9999


def test_the_speed_model_counts_the_adapter_each_token_reads(adapter_gguf):
    """An adapter's A and B matrices are read beside their weights at every token: the plan predicts that cost
    (at F32's cost per byte), where the layers run."""
    from edgellm.engine.launch import plan_model
    from edgellm.plan import speed
    from edgellm.plan.hardware import detect

    base = smollm2_converted_gguf("f32")
    plain = plan_model(base, ctx=256, threads=1)
    adapted = plan_model(base, ctx=256, threads=1, loras=[(adapter_gguf["plain"], 0.5)])
    assert adapted.speed.source == "predicted" and adapted.speed.decode_tps < plain.speed.decode_tps
    extra_s = 1 / adapted.speed.decode_tps - 1 / plain.speed.decode_tps
    n_bytes = adapted.loras[0].n_bytes
    bandwidth = speed.machine_speed(detect()).memory_bps
    assert extra_s == pytest.approx(max(speed.DECODE_S_PER_GB["F32"] * n_bytes / speed.GB, n_bytes / bandwidth), rel=0.05)
    assert adapted.speed.prompt_tps < plain.speed.prompt_tps


@pytest.mark.slow
def test_the_engine_applies_the_adapter_at_its_scale(adapter_gguf, tokens):
    """Through the planner and Engine.load, as run, chat and serve load it; scale 0.5 halves peft's scaling."""
    import llama_cpp as L

    from edgellm.engine.launch import plan_model
    from edgellm.engine.runtime import Engine

    plan = plan_model(smollm2_converted_gguf("f32"), ctx=256, threads=1, loras=[(adapter_gguf["plain"], 0.5)])
    assert plan.loras[0].scale == 0.5 and plan.memory.lora == plan.loras[0].n_bytes > 0
    with Engine.load(plan) as engine:
        assert engine.info.loras == (f"{NAME} ×0.5",)
        engine.evaluate(tokens)
        last = np.ctypeslib.as_array(L.llama_get_logits_ith(engine.context, -1), shape=(engine.n_vocab,)).copy()
    theirs = hf_logits(tokens, "plain", scale=0.5)[-1]
    assert cosines(last[None], theirs[None])[0] >= COSINE


# --- merged into a package -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_package_merges_the_adapter_into_every_level(tmp_path, capsys, tokens):
    pkg = tmp_path / "pkg"
    lora = smollm2_lora()
    code, _, err = run_cli(capsys, "package", str(smollm2_checkpoint()), "-o", str(pkg), "--levels", "Q8_0", "--base", "f32",
                           "--lora", str(lora))
    assert code == 0, err
    manifest = json.loads((pkg / "manifest.json").read_text())
    sums = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (lora / "adapter_config.json", lora / "adapter_model.safetensors")}
    assert manifest["adapters"] == [{"name": lora.name, "rank": 8, "alpha": 16.0, "rslora": False, "scale": 1.0, "sha256": sums}]
    assert f"LoRA adapter `{lora.name}`" in (pkg / "README.md").read_text()

    base = pkg / manifest["base"]["file"]
    ours, theirs = llama_logits(base, tokens), hf_logits(tokens, "plain", merged=True)
    assert cosines(ours, theirs).min() >= COSINE
    assert (ours.argmax(axis=1) == theirs.argmax(axis=1)).all()
    q8 = llama_logits(pkg / next(f["file"] for f in manifest["files"] if f["level"] == "Q8_0"), tokens)
    # quantized from the merged weights: nearer the fine-tuned model than the checkpoint it came from
    to_tuned, to_plain = cosines(q8, theirs).mean(), cosines(q8, hf_logits(tokens)).mean()
    assert to_tuned > to_plain

    # Another scale is another base: a re-run does not keep the one merged at scale 1.
    code, _, err = run_cli(capsys, "package", str(smollm2_checkpoint()), "-o", str(pkg), "--levels", "Q8_0", "--base", "f32",
                           "--lora", f"{lora}:0.5")
    assert code == 0, err
    again = json.loads((pkg / "manifest.json").read_text())
    assert again["adapters"][0]["scale"] == 0.5 and again["base"]["sha256"] != manifest["base"]["sha256"]


# --- the commands -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def peft_answer() -> str:
    """transformers + peft's greedy reply to QUESTION through the checkpoint's chat template."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_checkpoint())
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(smollm2_checkpoint(), dtype=torch.float32), smollm2_lora())
    ids = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    with torch.no_grad():
        gen = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
    return tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)


@pytest.mark.slow
def test_run_with_the_adapter_gives_the_peft_greedy_reply(adapter_gguf, peft_answer):
    args = [EDGELLM, "run", str(smollm2_converted_gguf("f32")), "-p", QUESTION, "--temp", "0", "-n", "24", "--repeat-penalty", "1",
            "-t", "1", "--lora", str(adapter_gguf["plain"])]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.rstrip("\n") == peft_answer
    assert f"LoRA {NAME}" in r.stderr.splitlines()[0]
    plain = subprocess.run(args[:-2], capture_output=True, text=True, timeout=300)
    assert plain.stdout != r.stdout  # the adapter changes the reply

    r = subprocess.run([*args[:-1], f"{adapter_gguf['plain']}:0.5", "--json"], capture_output=True, text=True, timeout=300)
    out = json.loads(r.stdout)
    assert out["engine"]["loras"] == [f"{NAME} ×0.5"]
    assert out["plan"]["loras"][0]["scale"] == 0.5 and out["plan"]["memory"]["lora"] > 0


@pytest.mark.slow
def test_serve_with_an_adapter_answers(adapter_gguf, peft_answer):
    from test_serve import Server

    server = Server(str(smollm2_converted_gguf("f32")), "--parallel", "1", "--ctx", "512", "--lora", str(adapter_gguf["plain"]))
    try:
        assert any(f"LoRA {NAME}" in line for line in server.log)
        client = server.client(None)
        reply = client.chat.completions.create(
            model="x", messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=24,
            extra_body={"repeat_penalty": 1.0},
        )
        assert reply.choices[0].message.content == peft_answer
        plan = client.models.list().data[0].model_dump()["meta"]["plan"]
        assert [a["name"] for a in plan["loras"]] == [NAME]
    finally:
        rc, log = server.interrupt()
    assert rc == 130 and "Traceback" not in log, log


@pytest.mark.slow
def test_bench_measures_with_and_without_the_adapter(adapter_gguf, capsys, tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(fixtures.english_text("eval", 4000))
    code, out, err = run_cli(capsys, "bench", str(smollm2_converted_gguf("f32")), "--lora", str(adapter_gguf["plain"]), "-p", "16",
                             "-n", "4", "-r", "1", "--threads", "1", "--quality", str(text), "--quality-ctx", "256", "--json")
    assert code == 0, err
    results = json.loads(out)["results"]
    assert [r["lora"] for r in results] == [None, NAME]
    assert all(r["tg"]["mean"] > 0 for r in results)
    assert results[1]["kld"] > results[0]["kld"]  # KL divergence from the file alone: the adapter moves its predictions


def test_the_chat_says_an_adapter_is_active(adapter_gguf):
    from edgellm.tui.backend import open_model
    from edgellm.tui.state import ChatSettings
    from edgellm.tui.widgets.status import Stats, StatsBar

    loaded = open_model(str(smollm2_converted_gguf("f32")), ChatSettings(n_ctx=512), loras=((adapter_gguf["plain"], 0.5),))
    try:
        assert loaded.lora == f"{NAME} ×0.5" and loaded.plan.endswith(f"LoRA {NAME} ×0.5")
        assert f"LoRA {NAME} ×0.5" in loaded.explain
    finally:
        loaded.engine.close()
    bar = StatsBar()
    bar.stats = Stats(state="ready", lora=loaded.lora)
    assert f"LoRA {NAME} ×0.5" in bar.render()


# --- bad input: one line, before anything loads ------------------------------------------------------------


def refused(capsys, *argv: str, code: int = 2) -> str:
    """`edgellm ARGV` failed with `code` and one `edgellm: ...` line, which is returned."""
    got, out, err = run_cli(capsys, *argv)
    lines = err.strip().splitlines()
    assert got == code and len(lines) == 1 and lines[0].startswith("edgellm: "), (got, err)
    return lines[0]


def adapter_copy(tmp_path: Path, config: dict | None = None, tensors: dict | None = None) -> Path:
    """A copy of the plain test adapter, with config keys changed (None removes one) or other tensors."""
    folder = tmp_path / "adapter"
    shutil.copytree(smollm2_lora(), folder)
    cfg = json.loads((folder / "adapter_config.json").read_text())
    for key, value in (config or {}).items():
        cfg.pop(key) if value is None else cfg.__setitem__(key, value)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    if tensors is not None:
        from safetensors.numpy import save_file

        save_file(tensors, str(folder / "adapter_model.safetensors"))
    return folder


def convert_adapter(capsys, folder: Path, tmp_path: Path, *base: str, code: int = 2) -> str:
    line = refused(capsys, "convert", str(folder), *(base or ("--base", str(smollm2_checkpoint()))), "-o", str(tmp_path / "a.gguf"),
                   code=code)
    assert not list(tmp_path.glob("a.gguf*")) and not list(tmp_path.glob(".a.gguf*"))
    return line


PREFIX = "base_model.model.model.layers.0.self_attn.q_proj"
A, B = np.ones((8, 576), np.float32), np.ones((576, 8), np.float32)


@pytest.mark.parametrize(
    "config,tensors,says",
    [
        ({"use_dora": True}, None, "DoRA"),
        ({"peft_type": "IA3"}, None, "only plain LoRA"),
        ({"modules_to_save": ["lm_head"]}, None, "modules_to_save"),
        ({"bias": "all"}, None, "trains biases"),
        ({"alpha_pattern": {"q_proj": 32}}, None, "alpha_pattern"),
        ({"some_future_setting": {"on": True}}, None, "some_future_setting"),
        ({"lora_alpha": "16"}, None, "lora_alpha must be a number"),
        ({"lora_alpha": float("nan")}, None, "lora_alpha must be a number"),
        ({"lora_alpha": 0}, None, "lora_alpha must be a number above 0"),
        ({"r": 0}, None, "r must be a whole number"),
        (None, {f"{PREFIX}.lora_A.weight": A, f"{PREFIX}.lora_B.weight": B, "base_model.model.lm_head.weight": np.ones((4, 4), np.float32)},
         "not a LoRA A or B matrix"),
        (None, {f"{PREFIX}.lora_A.weight": A}, "has lora_A but no lora_B"),
        (None, {f"{PREFIX}.lora_A.weight": A, f"{PREFIX}.lora_B.weight": np.ones((192, 8), np.float32)}, "trained on another model"),
        (None, {"base_model.model.lm_head.lora_A.weight": A, "base_model.model.lm_head.lora_B.weight": np.ones((49152, 8), np.float32)},
         "ties to its token embeddings"),
        (None, {"base_model.model.model.embed_tokens.lora_embedding_A": A}, "token embeddings"),
        (None, {f"{PREFIX}.lora_A.weight": A, f"{PREFIX}.lora_B.weight": B, f"{PREFIX}.lora_magnitude_vector": np.ones(576, np.float32)},
         "DoRA magnitude"),
    ],
)
def test_adapters_that_cannot_be_carried_are_refused(config, tensors, says, capsys, tmp_path):
    assert says in convert_adapter(capsys, adapter_copy(tmp_path, config, tensors), tmp_path)


def test_an_adapter_for_another_base_is_refused(capsys, tmp_path):
    qwen = str(fixtures.qwen2_checkpoint())
    line = convert_adapter(capsys, smollm2_lora(), tmp_path, "--base", qwen)
    assert "trained on a LlamaForCausalLM, the base is a Qwen2ForCausalLM" in line
    line = convert_adapter(capsys, adapter_copy(tmp_path, {"auto_mapping": None}), tmp_path, "--base", qwen)
    assert "does not fit this base" in line and "another model" in line


def test_damaged_adapter_files_are_refused(capsys, tmp_path):
    folder = adapter_copy(tmp_path)
    weights = folder / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "truncated" in convert_adapter(capsys, folder, tmp_path)
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    assert "corrupt" in convert_adapter(capsys, folder, tmp_path)
    weights.unlink()
    assert "no adapter_model.safetensors" in convert_adapter(capsys, folder, tmp_path)
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04")
    assert "refusing the pickle" in convert_adapter(capsys, folder, tmp_path)
    config = folder / "adapter_config.json"
    for text, says in (("{not json", "not valid JSON"), ("[1, 2]", "not a JSON object"), (" " * (2 << 20), "too large")):
        config.write_text(text)
        assert says in convert_adapter(capsys, folder, tmp_path, code=1)


def test_a_missing_base_is_refused(capsys, tmp_path):
    folder = adapter_copy(tmp_path, {"base_model_name_or_path": "/nowhere/SmolLM2"})
    assert "give --base" in convert_adapter(capsys, folder, tmp_path, "-q")
    assert "no config.json" in convert_adapter(capsys, folder, tmp_path, "--base", str(tmp_path))
    assert "not a hub repo id" in convert_adapter(capsys, folder, tmp_path, "--base", "no/such/base")


def test_bad_lora_options_are_refused_before_loading(capsys, tmp_path, adapter_gguf, converted):
    model = str(smollm2_converted_gguf("f32"))
    run = ["run", model, "-p", "hi"]
    assert "no such file" in refused(capsys, *run, "--lora", str(tmp_path / "none.gguf"))
    assert "edgellm convert" in refused(capsys, *run, "--lora", str(smollm2_lora()))
    assert "is not a LoRA adapter" in refused(capsys, *run, "--lora", model)
    for scale in ("11", "nan", "-inf", "strong"):
        assert "scale" in refused(capsys, *run, "--lora", f"{adapter_gguf['plain']}:{scale}")
    assert "for llama models, this one is qwen2" in refused(capsys, "run", str(converted("qwen2")), "-p", "hi", "--lora",
                                                           str(adapter_gguf["plain"]))
    assert "made for another base?" in refused(capsys, "run", str(converted("llama3")), "-p", "hi", "--lora",
                                               str(adapter_gguf["plain"]))
    assert "LoRA adapter, not a model" in refused(capsys, "run", str(adapter_gguf["plain"]), "-p", "hi")
    assert "--lora" in refused(capsys, "bench", model, "--lora", str(tmp_path / "none.gguf"))


def test_package_lora_needs_a_checkpoint(capsys, tmp_path):
    line = refused(capsys, "package", str(fixtures.smollm2_f16_gguf()), "-o", str(tmp_path / "pkg"), "--lora", str(smollm2_lora()))
    assert "is a GGUF file" in line and not (tmp_path / "pkg").exists()
    line = refused(capsys, "package", str(smollm2_checkpoint()), "-o", str(tmp_path / "pkg"), "--lora", str(tmp_path))
    assert "not a PEFT adapter folder" in line and not (tmp_path / "pkg").exists()
