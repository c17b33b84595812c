"""Pictures through llama.cpp's mtmd with the tiny Gemma 3 vision model: the reply depends on the picture, the
same picture gives the same reply, and bad input stops before anything loads."""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import llama_cpp as L
import pytest
from PIL import Image

from edgellm.engine.images import Picture, decode, read_image
from edgellm.engine.launch import plan_model
from edgellm.engine.runtime import Engine
from edgellm.engine.sampling import Sampling
from edgellm.engine.vision import MARKER, with_images
from edgellm.errors import UsageError
from test_images import bomb_png, encoded, gradient
from vision_fixtures import MM_TOKENS_PER_IMAGE, llamacpp_vision_reference

EDGELLM = str(Path(sys.executable).with_name("edgellm"))
GREEDY = Sampling(temperature=0, max_tokens=6)


@pytest.fixture(scope="module")
def vision():
    return llamacpp_vision_reference()


@pytest.fixture(scope="module")
def engine(vision):
    text, mmproj = vision
    with Engine.load(plan_model(text, ctx=512, threads=1), projector=mmproj) as e:
        yield e


@pytest.fixture(scope="module")
def pictures(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pictures")
    out = {}
    for name, im in {"red.png": Image.new("RGB", (80, 60), (220, 30, 30)), "stripes.jpg": gradient(90, 70)}.items():
        out[name] = d / name
        im.save(out[name])
    return out


def first_logits(engine: Engine, pics: list[Picture], text: str = "What is in the picture?") -> list[float]:
    messages = [{"role": "user", "content": with_images(text, len(pics))}]
    list(engine.stream_chat(messages, Sampling(temperature=0, max_tokens=1), images=pics))
    ptr = L.llama_get_logits_ith(engine.context, -1)
    return list(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[: engine.n_vocab])


def test_the_logits_depend_on_the_picture_and_repeat_for_the_same_one(engine, pictures):
    red, stripes = (read_image(p) for p in pictures.values())
    a = first_logits(engine, [red])
    b = first_logits(engine, [stripes])
    engine.reset()
    again = first_logits(engine, [red])
    assert a == again
    assert max(abs(x - y) for x, y in zip(a, b)) > 1e-3


def test_each_picture_takes_the_projectors_tokens(engine, pictures):
    red, stripes = (read_image(p) for p in pictures.values())
    text = engine.render_chat([{"role": "user", "content": "hi"}])
    media = engine.media_prompt(engine.render_chat([{"role": "user", "content": with_images("hi", 2)}]), [red, stripes])
    try:
        assert media.n_images == 2
        images_pos = sum(c.n_pos for c in media.chunks if c.tokens is None)
        assert images_pos == 2 * MM_TOKENS_PER_IMAGE
        assert len(media.keys) > len(engine.tokenize(text)) + images_pos  # and the image markers as text
    finally:
        media.close()


def test_a_next_turn_reuses_the_cache_up_to_a_changed_picture(engine, pictures):
    red, stripes = (read_image(p) for p in pictures.values())
    engine.reset()
    first_logits(engine, [red])
    full = engine.last_stats.prompt_eval_tokens
    first_logits(engine, [red])
    assert engine.last_stats.prompt_eval_tokens == 1  # only the last token, for its logits
    first_logits(engine, [stripes])
    assert MM_TOKENS_PER_IMAGE < engine.last_stats.prompt_eval_tokens < full


def test_places_and_pictures_must_agree(engine, pictures):
    red = read_image(pictures["red.png"])
    with pytest.raises(UsageError, match="2 places for images but 1 were given"):
        engine.media_prompt(MARKER * 2 + "hi", [red])


def edgellm(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EDGELLM, *args], capture_output=True, text=True, timeout=600, env=env)


def test_run_answers_by_the_picture(vision, pictures):
    text, mmproj = vision
    replies = []
    for name in ("red.png", "stripes.jpg", "red.png"):
        r = edgellm("run", str(text), "--mmproj", str(mmproj), "-i", str(pictures[name]), "-p", "What is this?",
                    "--temp", "0", "-n", "8", "-t", "1", "--json")
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["engine"]["projector"] == str(mmproj)
        replies.append(out["text"])
    assert replies[0] == replies[2]
    assert replies[0] != replies[1]


def test_run_takes_several_pictures(vision, pictures):
    text, mmproj = vision
    r = edgellm("run", str(text), "--mmproj", str(mmproj), "-i", str(pictures["red.png"]), "-i", str(pictures["stripes.jpg"]),
                "-p", "Compare them.", "--temp", "0", "-n", "4", "-t", "1", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["stats"]["prompt_tokens"] > 2 * MM_TOKENS_PER_IMAGE


@pytest.mark.parametrize("case", ["not an image", "bomb", "text-only model", "text model as projector", "no such file"])
def test_bad_input_is_one_line_before_anything_loads(case, vision, pictures, tmp_path):
    text, mmproj = vision
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(100_000, 100_000))
    args, why = {
        "not an image": (["--mmproj", str(mmproj), "-i", __file__], "not an image edgellm reads"),
        "bomb": (["--mmproj", str(mmproj), "-i", str(bomb)], "10,000,000,000 pixels is more than .*decompression bomb"),
        "text-only model": (["-i", str(pictures["red.png"])], "takes no images: it has no projector"),
        "text model as projector": (["--mmproj", str(text), "-i", str(pictures["red.png"])], "is not a projector"),
        "no such file": (["--mmproj", str(mmproj), "-i", str(tmp_path / "x.png")], "no such file"),
    }[case]
    log = tmp_path / "llama.log"
    r = edgellm("run", str(text), *args, "-p", "hi", env={**os.environ, "EDGELLM_LLAMA_LOG": str(log)})
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgellm: "), r.stderr
    assert re.search(why, lines[0]), lines[0]
    assert not log.exists() or "llama_model_load" not in log.read_text()  # llama.cpp never opened the model


def test_decoded_pictures_are_what_the_model_sees(pictures):
    # the same picture as PNG and as lossless WebP decodes to the same pixels, so it is the same picture to the model
    im = gradient(90, 70)
    assert decode(encoded(im, "PNG")).digest == decode(encoded(im, "WEBP", lossless=True)).digest


def test_a_package_edgellm_made_plans_and_runs_its_own_projector(pictures, tmp_path):
    """convert + package a vision checkpoint, then plan and run it by name, with no --mmproj: the manifest's
    projector is used, its image cost is what mtmd counts, and the reply follows the picture."""
    from vision_fixtures import gemma3_vision_checkpoint

    env = {**os.environ, "EDGELLM_HOME": str(tmp_path / "home")}
    pkg = tmp_path / "pkg"
    r = edgellm("package", str(gemma3_vision_checkpoint()), "-o", str(pkg), "--levels", "Q8_0", env=env)
    assert r.returncode == 0, r.stderr
    r = edgellm("import", str(pkg), "--name", "tiny-vision", env=env)
    assert r.returncode == 0, r.stderr
    r = edgellm("plan", "tiny-vision", "--json", env=env)
    assert r.returncode == 0, r.stderr
    projector = json.loads(r.stdout)["projector"]
    assert projector["image_tokens"] == MM_TOKENS_PER_IMAGE and projector["tokens_fixed"] and not projector["on_gpu"]
    assert projector["file_type"] == "F16" and Path(projector["path"]).name.startswith("mmproj-")
    replies, prompts = [], []
    for name in ("red.png", "stripes.jpg"):
        r = edgellm("run", "tiny-vision", "-i", str(pictures[name]), "-p", "What is this?", "--temp", "0", "-n", "8",
                    "-t", "1", "--json", env=env)
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["engine"]["projector"] == projector["path"]
        replies.append(out["text"])
        prompts.append(out["stats"]["prompt_tokens"])
    assert replies[0] != replies[1] and prompts[0] == prompts[1] > MM_TOKENS_PER_IMAGE
    r = edgellm("plan", "tiny-vision", env=env)
    assert f"an image costs {MM_TOKENS_PER_IMAGE} tokens of context" in r.stdout, r.stdout
    r = edgellm("run", "tiny-vision", "-p", "Hi", "--temp", "0", "-n", "2", "-t", "1", env=env)  # text alone still runs
    assert r.returncode == 0, r.stderr
