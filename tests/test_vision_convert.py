"""Vision checkpoints through convert and package: the text model and the projector (mmproj) GGUF against
llama.cpp's own converter (same tensors, bytes and metadata), the projector run by llama.cpp's mtmd, and the
package manifest that ties the projector to its levels."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import arch_fixtures
import vision_fixtures
from edgellm.cli import main
from test_convert import _fields, assert_same_tensors

# llama.cpp's converter names the file from its folder name (name, basename, finetune, size label); edgellm
# writes the folder name as general.name and nothing else (as for text models).
NAMING = {"general.name", "general.basename", "general.finetune", "general.size_label"}
# Text-model keys written differently on purpose (as test_archs.py lists them for Gemma 3).
TEXT_ONLY_OURS = {"gemma3.attention.sliding_window_pattern", "tokenizer.ggml.eot_token_id", "gemma3.rope.dimension_count",
                  "gemma3.vocab_size"}


def mtmd_image_tokens(text: Path, mmproj: Path, nx: int = 50, ny: int = 40) -> int:
    """The image-embedding tokens llama.cpp's mtmd gives one nx x ny picture with this model and projector (CPU
    only; the text tokens it puts between tiles are not counted)."""
    import ctypes

    import llama_cpp as L
    import llama_cpp.mtmd_cpp as M

    mp = L.llama_model_default_params()
    mp.n_gpu_layers = 0
    model = L.llama_model_load_from_file(str(text).encode(), mp)
    assert model
    params = M.mtmd_context_params_default()
    params.use_gpu, params.n_threads, params.warmup = False, 1, False
    ctx = M.mtmd_init_from_file(str(mmproj).encode(), model, params)
    assert ctx
    bitmap = M.mtmd_bitmap_init(nx, ny, (ctypes.c_ubyte * (nx * ny * 3))())
    prompt = f"look: {M.mtmd_default_marker().decode()}".encode()
    chunks = M.mtmd_input_chunks_init()
    try:
        text_in = M.mtmd_input_text(prompt, len(prompt), True, True)
        assert M.mtmd_tokenize(ctx, chunks, ctypes.byref(text_in), (ctypes.c_void_p * 1)(bitmap), 1) == 0
        images = [M.mtmd_input_chunks_get(chunks, i) for i in range(M.mtmd_input_chunks_size(chunks))]
        images = [c for c in images if M.mtmd_input_chunk_get_type(c) == M.MTMD_INPUT_CHUNK_TYPE_IMAGE]
        return sum(M.mtmd_input_chunk_get_n_tokens(c) for c in images)  # a picture in tiles is a chunk per tile
    finally:
        M.mtmd_input_chunks_free(chunks)
        M.mtmd_bitmap_free(bitmap)
        M.mtmd_free(ctx)
        L.llama_model_free(model)


def _convert(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "model.gguf"
    assert main(["convert", "-q", str(vision_fixtures.gemma3_vision_checkpoint()), "-o", str(out), "--json", *extra]) == 0
    return out


def converter(tmp_path_factory, checkpoint, label: str):
    """convert's outputs for `checkpoint()` per type, made once each: get(type) -> (text GGUF, projector GGUF)."""
    done = {}

    def get(ptype: str) -> tuple[Path, Path]:
        if ptype not in done:
            folder = tmp_path_factory.mktemp(f"{label}-{ptype}")
            src = checkpoint()
            assert main(["convert", "-q", str(src), "-o", str(folder / "model.gguf"), "--outtype", ptype,
                         "--projector-type", ptype]) == 0
            done[ptype] = folder / "model.gguf", folder / f"mmproj-{src.name}-{ptype.upper()}.gguf"
        return done[ptype]

    return get


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """convert's outputs per projector type: (text GGUF, projector GGUF)."""
    return converter(tmp_path_factory, vision_fixtures.gemma3_vision_checkpoint, "vision")


@pytest.mark.parametrize("ptype", ["f16", "q8_0"])
def test_projector_and_text_match_llamacpp(ptype, converted):
    text, mmproj = converted(ptype)
    ref_text, ref_mmproj = vision_fixtures.llamacpp_vision_reference(ptype)
    for ours, ref, ours_only in ((mmproj, ref_mmproj, set()), (text, ref_text, TEXT_ONLY_OURS)):
        meta, tensors = _fields(ours)
        ref_meta, ref_tensors = _fields(ref)
        assert_same_tensors(tensors, ref_tensors)
        assert set(meta) - NAMING == (set(ref_meta) - NAMING) | ours_only
        assert {k: v for k, v in meta.items() if k in ref_meta and k not in NAMING} == {
            k: v for k, v in ref_meta.items() if k in meta and k not in NAMING}
    types = {t.name: t.tensor_type.name for t in _fields(mmproj)[1].values()}
    assert types["v.blk.0.attn_q.weight"] == ptype.upper() and types["mm.input_projection.weight"] == "F16"


def test_projector_runs_in_mtmd(converted):
    """llama.cpp's mtmd loads the converted pair and turns a picture into the 16 tokens the model takes."""
    text, mmproj = converted("f16")
    assert mtmd_image_tokens(text, mmproj) == vision_fixtures.MM_TOKENS_PER_IMAGE


def test_convert_json_names_the_projector(tmp_path, capsys):
    _convert(tmp_path)
    summary = json.loads(capsys.readouterr().out)
    assert summary["arch"] == "gemma3"
    assert summary["projector"]["file_type"] == "F16" and Path(summary["projector"]["path"]).is_file()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("edgellm: "), err
    return err


def test_unknown_vision_part_is_refused_in_one_line(tmp_path, capsys):
    src = arch_fixtures.gemma4_multimodal_checkpoint()
    rc = main(["convert", "-q", str(src), "-o", str(tmp_path / "out.gguf")])
    err = _one_line_error(capsys)
    assert rc == 1 and "Gemma4ForConditionalGeneration" in err and "gemma3 (Gemma3ForConditionalGeneration)" in err
    assert not list(tmp_path.iterdir())  # refused before anything was written
    # the text model alone, on request
    assert main(["convert", "-q", str(src), "-o", str(tmp_path / "out.gguf"), "--projector-type", "none"]) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["out.gguf"]


def test_projector_type_on_a_text_checkpoint_is_a_usage_error(tmp_path, capsys):
    rc = main(["convert", "-q", str(arch_fixtures.gemma3_checkpoint()), "-o", str(tmp_path / "out.gguf"), "--projector-type", "q8_0"])
    assert rc == 2 and "no vision_config" in _one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_bad_vision_config_is_refused_in_one_line(tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(vision_fixtures.gemma3_vision_checkpoint(), src)
    cfg = json.loads((src / "config.json").read_text())
    cfg["vision_config"]["patch_size"] = "8"
    (src / "config.json").write_text(json.dumps(cfg))
    rc = main(["convert", "-q", str(src), "-o", str(tmp_path / "out.gguf")])
    assert rc == 1 and "patch_size" in _one_line_error(capsys)
    assert not (tmp_path / "out.gguf").exists()


# --- the package ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    out = tmp_path_factory.mktemp("vision-pkg") / "pkg"
    assert main(["package", str(vision_fixtures.gemma3_vision_checkpoint()), "-o", str(out), "--levels", "Q8_0",
                 "--projector-type", "q8_0", "--json"]) == 0
    return out


def test_package_ties_the_projector_to_its_levels(package, tmp_path, capsys):
    from edgellm.store.manifest import sha256_file
    from edgellm.store.models import resolve_model

    m = json.loads((package / "manifest.json").read_text())
    p = m["projector"]
    path = package / p["file"]
    assert (p["type"], p["projector_type"], p["bytes"], p["sha256"]) == ("Q8_0", "gemma3", path.stat().st_size, sha256_file(path))
    assert resolve_model(package).projector == path
    assert main(["verify", str(package)]) == 0
    # a second run keeps the projector (same source, same type)
    mtime = path.stat().st_mtime_ns
    assert main(["package", str(vision_fixtures.gemma3_vision_checkpoint()), "-o", str(package), "--levels", "Q8_0",
                 "--projector-type", "q8_0", "--json"]) == 0
    assert path.stat().st_mtime_ns == mtime


def test_a_damaged_projector_turns_images_off_and_refuses_pictures_in_one_line(package, tmp_path, capsys):
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    mm = copy / json.loads((copy / "manifest.json").read_text())["projector"]["file"]
    data = bytearray(mm.read_bytes())
    data[-1] ^= 0xFF
    mm.write_bytes(bytes(data))
    capsys.readouterr()
    assert main(["verify", str(copy)]) == 1
    assert "projector sha256 does not match" in capsys.readouterr().err
    assert main(["run", str(copy), "-p", "hi", "-n", "1"]) == 0  # the text model is whole: it runs, pictures off
    err = capsys.readouterr().err
    assert f"the projector {mm.name} does not match its manifest's sha256" in err and "images are off" in err
    picture = tmp_path / "red.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 0, 0)).save(picture)
    assert main(["run", str(copy), "-p", "hi", "-n", "1", "--image", str(picture)]) == 1
    err = _one_line_error(capsys)
    assert f"the projector {mm.name} does not match its manifest's sha256" in err


# --- import, push -----------------------------------------------------------------------------------------


def test_import_carries_the_projector(converted, tmp_path, capsys):
    from edgellm.store import store
    from edgellm.store.models import resolve_model

    text, mmproj = converted("f16")
    folder = tmp_path / "lmstudio" / "gemma3-vision"
    folder.mkdir(parents=True)
    for f in (text, mmproj):
        (folder / f.name).symlink_to(f)
    assert main(["import", str(folder)]) == 0  # a folder: its mmproj-*.gguf goes with the model
    ref = resolve_model(store.resolve("gemma3-vision"))
    assert ref.projector is not None and ref.projector.resolve() == mmproj.resolve()
    assert "projector mmproj-gemma3-vision-F16.gguf" in capsys.readouterr().out
    assert main(["list", "--json"]) == 0
    listed = {p["name"]: p for p in json.loads(capsys.readouterr().out)["packages"]}
    assert listed["gemma3-vision"]["projector"] == {"file": "mmproj-gemma3-vision-F16.gguf", "size": mmproj.stat().st_size,
                                                    "file_type": "F16", "image_tokens": 16, "tokens_fixed": True}
    assert listed["gemma3-vision"]["size"] == text.stat().st_size + mmproj.stat().st_size
    assert main(["list"]) == 0
    assert "IMAGES" in capsys.readouterr().out
    # one file and its projector named beside it
    assert main(["import", str(text), "--name", "g3", "--mmproj", str(mmproj)]) == 0
    assert resolve_model(store.resolve("g3")).projector.resolve() == mmproj.resolve()
    capsys.readouterr()
    assert main(["import", str(text), "--name", "g4", "--mmproj", str(text)]) == 2
    assert "is not a vision projector GGUF" in _one_line_error(capsys)


def test_push_sends_the_projector_and_describes_the_model(package, capsys):
    assert main(["push", str(package), "me/gemma3-vision-GGUF", "--dry-run", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    names = [f["path"] for f in plan["files"]]
    projector = plan["manifest"]["projector"]["file"]
    assert projector in names and projector.startswith("mmproj-")
    assert "gemma3" in plan["card"] and "clip" not in plan["card"].split("---")[1]  # the model's arch, not the projector's


# --- the plan ---------------------------------------------------------------------------------------------

GIB = 1 << 30


def test_gemma3_image_cost_per_projector_header():
    """The released Gemma 3 projectors (896-pixel images in 14-pixel patches, pooled by 4 per side) cost 256
    tokens; a header with its own scale factor (the tiny test model) is read as it says."""
    from edgellm.plan.projector import IMAGE_TOKENS

    assert IMAGE_TOKENS["gemma3"].tokens({"clip.vision.image_size": 896, "clip.vision.patch_size": 14}, 0, 0) == 256
    tiny = {"clip.vision.image_size": 64, "clip.vision.patch_size": 8, "clip.vision.projector.scale_factor": 2}
    assert IMAGE_TOKENS["gemma3"].tokens(tiny, 1920, 1080) == 16


def test_plan_shows_the_projector_and_an_images_cost_as_mtmd_counts_it(package, capsys):
    from edgellm.formats.gguf_info import read_gguf
    from edgellm.store.models import resolve_model

    ref = resolve_model(package)
    text = ref.file("Q8_0").path
    tokens = {mtmd_image_tokens(text, ref.projector, nx, ny) for nx, ny in ((50, 40), (300, 20))}
    assert tokens == {vision_fixtures.MM_TOKENS_PER_IMAGE}  # mtmd: a fixed count, whatever the picture's size
    capsys.readouterr()
    assert main(["plan", str(package), "--json"]) == 0
    projector = json.loads(capsys.readouterr().out)["projector"]
    assert projector["image_tokens"] in tokens and projector["projector_type"] == "gemma3"
    assert projector["weights"] == read_gguf(ref.projector).tensor_bytes and projector["file_type"] == "Q8_0"
    assert main(["plan", str(package)]) == 0
    assert "an image costs 16 tokens of context" in capsys.readouterr().out


def _free_for(budget: int) -> int:
    """The free VRAM whose planning budget (less the margins) is `budget`, or a byte or two more."""
    from edgellm.plan.planner import VRAM_MARGIN, _budget

    free = int((budget + VRAM_MARGIN[0]) / (1 - VRAM_MARGIN[1]))
    while _budget(free, VRAM_MARGIN) < budget:
        free += 1
    return free


def test_the_projector_takes_vram_before_the_layers(package):
    """As mtmd does, the projector goes on the GPU when it fits there, and the layers get what is left; when
    it does not fit, it is counted in RAM and the layers keep the GPU."""
    from dataclasses import replace

    from edgellm.plan.hardware import synthetic
    from edgellm.plan.planner import make_plan

    ref = resolve_model_q8(package)
    text_only = make_plan(replace(ref, projector=None), synthetic(8 * GIB, 4 * GIB), ctx=2048, min_speed=0)
    assert text_only.fit == "gpu"
    weights = make_plan(ref, synthetic(8 * GIB, 4 * GIB), ctx=2048, min_speed=0).projector.weights
    # room for every layer, or for the projector and all but the last layers
    tight = synthetic(8 * GIB, _free_for(text_only.memory.vram + weights // 2))
    plan = make_plan(ref, tight, ctx=2048, min_speed=0)
    assert plan.projector.on_gpu and plan.n_gpu_layers < text_only.n_gpu_layers
    assert plan.memory.vram + weights <= plan.vram_budget
    assert "projector" in plan.explain() and "on GPU" in plan.explain()
    # less VRAM than the projector alone: it goes to RAM and the layers stay on the GPU they fit
    small = synthetic(8 * GIB, _free_for(weights - 1))
    plan = make_plan(ref, small, ctx=2048, min_speed=0)
    assert not plan.projector.on_gpu and "on CPU" in plan.explain()


def resolve_model_q8(package):
    """The package with its Q8_0 level alone (the BF16 base is a file to quantize from)."""
    from dataclasses import replace

    from edgellm.store.models import resolve_model

    ref = resolve_model(package)
    return replace(ref, files=(ref.file("Q8_0"),))


# --- real shapes, damaged checkpoints ----------------------------------------------------------------------

# google/gemma-3-4b-it's config.json as the Hub has it: the text settings the 4B model shares with
# transformers' defaults are left out of text_config.
GEMMA3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "mm_tokens_per_image": 256,
    "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144, "eos_token_id": [1, 106],
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                      "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False},
}


def test_gemma3_4b_hub_config_plans_as_llamacpp_reads_it(tmp_path):
    """The text model with the 4B defaults filled in, and the projector header llama.cpp's converter writes
    for it (no scale factor: the default pooling of 4, so 256 tokens an image), from the config and tensor
    shapes alone."""
    from edgellm.plan.projector import IMAGE_TOKENS
    from edgellm.quantize.arch import read_hparams, text_part
    from edgellm.quantize.checkpoint import Checkpoint, TensorEntry
    from edgellm.quantize.projector import PROJECTORS, describe_projector

    config, _ = text_part(GEMMA3_4B, [])
    hp = read_hparams(config)
    assert (hp.n_head, hp.n_head_kv, hp.head_dim, hp.n_vocab, hp.n_ctx, hp.rope_theta) == (8, 4, 256, 262208, 131072, 1e6)
    spec = PROJECTORS["Gemma3ForConditionalGeneration"]
    shapes = spec.shapes(GEMMA3_4B, 2560)
    hf = {"v.patch_embd": "embeddings.patch_embedding", "v.position_embd": "embeddings.position_embedding",
          "v.post_ln": "post_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
          "attn_out": "self_attn.out_proj", "ln1": "layer_norm1", "ln2": "layer_norm2", "ffn_up": "mlp.fc1", "ffn_down": "mlp.fc2"}

    def stored(name: str) -> str:
        if name.startswith("mm."):
            return {"mm.input_projection.weight": "multi_modal_projector.mm_input_projection_weight",
                    "mm.soft_emb_norm.weight": "multi_modal_projector.mm_soft_emb_norm.weight"}[name]
        stem, kind = name.rsplit(".", 1)
        if stem.startswith("v.blk."):
            _, _, i, part = stem.split(".")
            return f"vision_tower.vision_model.encoder.layers.{i}.{hf[part]}.{kind}"
        return f"vision_tower.vision_model.{hf[stem]}.{kind}"

    tensors = {stored(n): TensorEntry(stored(n), "BF16", shape, tmp_path / "x", 0, 0) for n, shape in shapes.items()}
    ckpt = Checkpoint(tmp_path, GEMMA3_4B, tensors)
    writer, out = describe_projector(ckpt, spec, "f16", {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_seq_length": 256})
    meta = {k: v.value for k, v in writer.kv_data[0].items()}
    assert meta["clip.vision.projection_dim"] == 2560 and meta["clip.projector_type"] == "gemma3"
    assert "clip.vision.projector.scale_factor" not in meta  # llama.cpp's default pooling
    assert IMAGE_TOKENS["gemma3"].tokens(meta, 0, 0) == 256
    weights = sum(t.nbytes for t in out)
    assert 800 << 20 < weights < 830 << 20  # about 812 MiB at F16 (the embeddings in F32), as llama.cpp's file


def _damaged(tmp_path: Path, edit) -> Path:
    from safetensors.torch import load_file, save_file

    src = tmp_path / "src"
    shutil.copytree(vision_fixtures.gemma3_vision_checkpoint(), src)
    weights = load_file(src / "model.safetensors")
    edit(weights)
    save_file(weights, src / "model.safetensors", metadata={"format": "pt"})
    return src


DAMAGED = [
    (lambda w: w.pop("vision_tower.vision_model.encoder.layers.1.mlp.fc2.weight"), r"lacks the vision tensor that becomes v\.blk\.1\.ffn_down\.weight"),
    (lambda w: w.update({"vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight": w["vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"][:32]}),
     r"layers\.0\.mlp\.fc1\.weight has shape \[32, 32\] but config\.json implies \[64, 32\]"),
    (lambda w: w.update({"vision_tower.vision_model.encoder.layers.2.mlp.fc1.weight": w["vision_tower.vision_model.encoder.layers.0.mlp.fc1.weight"].clone()}),
     r"vision tensor vision_tower\.vision_model\.encoder\.layers\.2\.mlp\.fc1\.weight that the gemma3 projector does not use"),
]


@pytest.mark.parametrize("edit,pattern", DAMAGED)
def test_damaged_vision_tensors_are_refused_before_writing(edit, pattern, tmp_path, capsys):
    import re

    src = _damaged(tmp_path, edit)
    out = tmp_path / "out" / "model.gguf"
    rc = main(["convert", "-q", str(src), "-o", str(out)])
    err = _one_line_error(capsys)
    assert rc == 1 and re.search(pattern, err), err
    assert not out.parent.exists() or not list(out.parent.iterdir())


@pytest.mark.parametrize("projector,pattern", [
    ({"file": "../x.gguf", "type": "F16", "bytes": 1, "sha256": "0", "projector_type": "gemma3"}, r"not a plain file name"),
    ({"file": "mmproj.gguf", "type": "F16", "bytes": "1", "sha256": "0", "projector_type": "gemma3"}, r"wrong type"),
    ({"file": "mmproj.gguf", "type": "F16"}, r"malformed manifest"),
])
def test_a_malformed_projector_entry_is_one_line(package, tmp_path, projector, pattern, capsys):
    import re

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    m = json.loads((copy / "manifest.json").read_text())
    m["projector"] = projector
    (copy / "manifest.json").write_text(json.dumps(m))
    assert main(["verify", str(copy)]) == 1
    assert re.search(pattern, _one_line_error(capsys))


# --- SmolVLM (Idefics3's projector) -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def smolvlm_at(tmp_path_factory):
    """convert's outputs for the tiny SmolVLM per type: (text GGUF, projector GGUF)."""
    import smolvlm_fixtures

    return converter(tmp_path_factory, smolvlm_fixtures.smolvlm_checkpoint, "smolvlm")


@pytest.fixture(scope="module")
def smolvlm(smolvlm_at):
    return smolvlm_at("f16")


@pytest.mark.parametrize("ptype", ["f16", "q8_0"])
def test_smolvlm_matches_llamacpp(ptype, smolvlm_at):
    import smolvlm_fixtures

    text, mmproj = smolvlm_at(ptype)
    ref_text, ref_mmproj = smolvlm_fixtures.llamacpp_smolvlm_reference(ptype)
    # the fixture's tokenizer.json (SmolLM2's, as transformers rebuilds it) has no Digits step: GPT-2's
    # splitting, where llama.cpp guesses "smollm" from a hash (as test_convert.py finds for SmolLM2 itself)
    text_differs = {"tokenizer.ggml.add_eos_token", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.pre"}
    for ours, ref, skip in ((mmproj, ref_mmproj, set()), (text, ref_text, text_differs)):
        meta, tensors = _fields(ours)
        ref_meta, ref_tensors = _fields(ref)
        assert_same_tensors(tensors, ref_tensors)
        assert set(meta) - NAMING - skip == set(ref_meta) - NAMING - skip
        assert {k: v for k, v in meta.items() if k in ref_meta and k not in NAMING | skip} == {
            k: v for k, v in ref_meta.items() if k in meta and k not in NAMING | skip}


# picture sizes -> tiles in the tiny SmolVLM (longest edge 128 in 64-pixel tiles), plus the whole picture
SMOLVLM_SIZES = [((50, 40), 4), ((300, 20), 2), ((20, 300), 2), ((128, 64), 2), ((1000, 999), 4)]


def test_smolvlm_image_cost_follows_the_size_as_mtmd_counts_it(smolvlm):
    from edgellm.plan.projector import image_tokens, place_projector, read_projector

    text, mmproj = smolvlm
    info = read_projector(mmproj)
    for (w, h), tiles in SMOLVLM_SIZES:
        assert mtmd_image_tokens(text, mmproj, w, h) == image_tokens(info, w, h) == (tiles + 1) * 16, (w, h)
    plan = place_projector(mmproj, 0, gpu=False)
    assert plan.image_tokens == 80 and "an image costs up to 80 tokens of context" in plan.text()


def test_another_projector_type_replaces_the_old_one(package, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    old = json.loads((copy / "manifest.json").read_text())["projector"]["file"]
    assert main(["package", str(vision_fixtures.gemma3_vision_checkpoint()), "-o", str(copy), "--levels", "Q8_0", "--json"]) == 0
    new = json.loads((copy / "manifest.json").read_text())["projector"]
    assert new["type"] == "F16" and new["file"] != old and not (copy / old).exists()
    assert sorted(p.name for p in copy.glob("mmproj-*")) == [new["file"]]
    assert main(["verify", str(copy)]) == 0
    assert f"`{new['file']}` (gemma3, F16" in (copy / "README.md").read_text()  # the model card names it


# --- faults: a vision package killed mid-work, a disk that fills while the projector is written -----------------


@pytest.mark.slow
@pytest.mark.parametrize("point", ["convert.tensor:3", "projector.tensor:1", "projector.tensor:5", "package.base"])
def test_package_killed_while_writing_the_model_or_projector_then_completes(point, tmp_path):
    import signal

    import pausing
    from edgellm.store.manifest import Manifest

    folder = tmp_path / "pkg"
    args = ["package", vision_fixtures.gemma3_vision_checkpoint(), "-o", folder, "--levels", "Q8_0", "--jobs", "1"]
    killed = pausing.finish(pausing.start_paused(point, *args), signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL, (point, killed.stderr[-2000:])
    assert not any(p.name.startswith("mmproj-") for p in folder.glob("*.gguf")) or point == "package.base"
    done = pausing.edgellm(*args)
    assert done.returncode == 0, (point, done.stderr[-2000:])
    assert pausing.edgellm("verify", folder).returncode == 0
    manifest = Manifest.load(folder)
    assert manifest.projector is not None and (folder / manifest.projector.file).is_file()
    assert pausing.hidden_files(folder) == []


def test_a_full_disk_while_the_projector_is_written_is_one_line_and_leaves_no_projector(tmp_path, capsys, monkeypatch):
    import builtins
    import errno

    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "mmproj" in str(file) and "w" in mode:
            f.write = lambda data: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device"))
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    out = tmp_path / "model.gguf"
    code = main(["convert", "-q", str(vision_fixtures.gemma3_vision_checkpoint()), "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3 and len(err) == 1 and err[0].startswith("edgellm: disk full while writing") and "mmproj" in err[0], err
    assert not list(tmp_path.glob("mmproj*")) and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
