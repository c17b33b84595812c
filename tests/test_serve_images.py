"""Pictures over every API of `edgellm serve` with the tiny Gemma 3 vision model, through the real `openai`,
`anthropic` and `ollama` clients: the same picture gives the same greedy reply on each route, another picture
another reply, and pictures that are no image, or sent to a text-only model, are a 400 with one clear line."""

from __future__ import annotations

import base64
import io

import anthropic
import ollama
import openai
import pytest
from PIL import Image

from edgellm.serve.errors import ApiError
from edgellm.serve.pictures import decode_all
from edgellm.serve.schemas import ImageRef
from serving import KEY, WAIT_S, Server
from test_images import bomb_png, gradient
from vision_fixtures import MM_TOKENS_PER_IMAGE, llamacpp_vision_reference

ASK = "What is in the picture?"
N = 6


def png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


RED = png(Image.new("RGB", (80, 60), (220, 30, 30)))
STRIPES = png(gradient(90, 70))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + b64(data)


@pytest.fixture(scope="module")
def server():
    text, mmproj = llamacpp_vision_reference()
    s = Server(str(text), "--mmproj", str(mmproj), "--parallel", "2", "--ctx", "512", "--api-key", KEY, "--alias", "vision", "--allow-image-urls")
    yield s
    rc, log = s.interrupt()
    assert rc == 130 and "Traceback" not in log, log


def openai_chat(server: Server, image: bytes) -> str:
    content = [{"type": "image_url", "image_url": {"url": data_url(image)}}, {"type": "text", "text": ASK}]
    r = server.client().chat.completions.create(model="any", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=N)
    return r.choices[0].message.content


def responses(server: Server, image: bytes) -> str:
    item = {"role": "user", "content": [{"type": "input_image", "image_url": data_url(image)}, {"type": "input_text", "text": ASK}]}
    return server.client().responses.create(model="any", input=[item], temperature=0, max_output_tokens=N).output_text


def messages(server: Server, image: bytes) -> str:
    c = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=WAIT_S)
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(image)}}
    r = c.messages.create(model="any", max_tokens=N, messages=[{"role": "user", "content": [block, {"type": "text", "text": ASK}]}],
                          extra_body={"temperature": 0})
    return r.content[0].text


def test_anthropic_counts_the_tokens_a_picture_takes(server):
    c = anthropic.Anthropic(base_url=server.url, api_key=KEY, max_retries=0, timeout=WAIT_S)
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": b64(RED)}}
    text = c.messages.count_tokens(model="any", messages=[{"role": "user", "content": ASK}]).input_tokens
    both = c.messages.count_tokens(model="any", messages=[{"role": "user", "content": [block, {"type": "text", "text": ASK}]}]).input_tokens
    assert both >= text + MM_TOKENS_PER_IMAGE  # and the picture's markers


def ollama_client(server: Server) -> ollama.Client:
    return ollama.Client(host=server.url, headers={"Authorization": f"Bearer {KEY}"}, timeout=WAIT_S)


def ollama_chat(server: Server, image: bytes) -> str:
    r = ollama_client(server).chat(model="vision", messages=[{"role": "user", "content": ASK, "images": [image]}],
                                   options={"temperature": 0, "num_predict": N})
    return r.message.content


def ollama_generate(server: Server, image: bytes) -> str:
    return ollama_client(server).generate(model="vision", prompt=ASK, images=[image], options={"temperature": 0, "num_predict": N}).response


ROUTES = {"chat/completions": openai_chat, "responses": responses, "messages": messages, "api/chat": ollama_chat,
          "api/generate": ollama_generate}


def test_every_route_answers_by_the_picture(server):
    replies = {name: [ask(server, RED), ask(server, STRIPES), ask(server, RED)] for name, ask in ROUTES.items()}
    for name, (red, stripes, again) in replies.items():
        assert red == again, name
        assert red != stripes, name
    # the image and the question sit in one user turn on every route: the same prompt, so the same reply
    assert len({r[0] for r in replies.values()}) == 1, replies


def test_two_pictures_in_one_request_in_both_slots_at_once(server):
    import concurrent.futures

    content = [{"type": "image_url", "image_url": {"url": data_url(RED)}}, {"type": "image_url", "image_url": {"url": data_url(STRIPES)}},
               {"type": "text", "text": "Compare."}]

    def ask(_):
        r = server.client().chat.completions.create(model="any", messages=[{"role": "user", "content": content}], temperature=0, max_tokens=N)
        return r.choices[0].message.content, r.usage.prompt_tokens

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(ask, range(2))
    assert a == b
    assert a[1] > 32  # two pictures of 16 tokens, and the text


@pytest.mark.parametrize("image,why", [
    (b"%PDF-1.4 no picture", "not an image edgellm reads"),
    (bomb_png(100_000, 100_000), "decompression bomb"),
])
def test_what_is_no_picture_is_a_400_on_each_api(server, image, why):
    with pytest.raises(openai.BadRequestError, match=why):
        openai_chat(server, image)
    with pytest.raises(anthropic.BadRequestError, match=why):
        messages(server, image)
    with pytest.raises(ollama.ResponseError, match=why) as e:
        ollama_chat(server, image)
    assert e.value.status_code == 400


def test_bad_base64_and_urls_are_400s(server):
    http = server.http()
    body = {"model": "any", "max_tokens": 4, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}]}]}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and "not valid base64" in r.json()["error"]["message"]
    assert r.json()["error"]["param"] == "messages[0].content[0].image_url"
    body["messages"][0]["content"][0]["image_url"]["url"] = f"{server.url}/cat.png"  # allowed, but never from loopback
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400 and "127.0.0.1, a loopback, private, link-local or reserved address" in r.json()["error"]["message"]
    r = http.post("/api/chat", json={"model": "vision", "messages": [{"role": "user", "content": "hi", "images": "abc"}]})
    assert r.status_code == 400 and "list of base64" in r.json()["error"]


def test_a_text_only_model_refuses_pictures_with_a_400():
    with Server("--parallel", "1", "--ctx", "512", "--alias", "smol") as s:
        with pytest.raises(openai.BadRequestError, match="takes no images: it has no projector"):
            openai_chat(s, RED)
        r = s.http().post("/api/generate", json={"model": "smol", "prompt": "hi", "images": [b64(RED)], "stream": False})
        assert r.status_code == 400 and "takes no images" in r.json()["error"]


def test_a_raw_generate_takes_the_picture_at_the_start_of_its_prompt(server):
    http = server.http()
    prompt = "<start_of_turn>user\n" + ASK + "<end_of_turn>\n<start_of_turn>model\n"
    replies = [http.post("/api/generate", json={"model": "vision", "prompt": prompt, "raw": True, "images": [b64(im)], "stream": False,
                                                "options": {"temperature": 0, "num_predict": N}}).json()["response"] for im in (RED, STRIPES, RED)]
    assert replies[0] == replies[2] != replies[1]


def test_urls_are_fetched_only_where_the_server_allows_them():
    ref = ImageRef("messages[0].content[0].image_url", "https://example.com/cat.png", True)
    with pytest.raises(ApiError, match="fetches no image URLs: send the image as base64 data .* --allow-image-urls") as e:
        decode_all([ref], allow_urls=False)
    assert e.value.status == 400 and e.value.param == ref.where


def test_bombs_and_junk_sent_beside_good_pictures_at_once_leave_the_good_ones_answered(server):
    """Eight requests at once on two slots: good pictures, bombs, junk bytes and a client that leaves mid-reply.
    Each bad one is its own 400, each good one gets the reply it gets alone, and the server serves on."""
    import concurrent.futures

    alone = openai_chat(server, RED)
    bomb, junk = bomb_png(100_000, 100_000), b"\x89PNG\r\n\x1a\n" + b"\0" * 64

    def one(image: bytes):
        try:
            return openai_chat(server, image)
        except openai.BadRequestError as e:
            return f"400: {e.body['message']}"

    def leave_mid_reply(_):
        content = [{"type": "image_url", "image_url": {"url": data_url(STRIPES)}}, {"type": "text", "text": ASK}]
        stream = server.client().chat.completions.create(model="any", messages=[{"role": "user", "content": content}],
                                                         max_tokens=200, stream=True)
        next(iter(stream))
        stream.close()
        return "left"

    work = [RED, bomb, junk, RED, bomb, RED]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        left = [pool.submit(leave_mid_reply, i) for i in range(2)]
        got = list(pool.map(one, work))
        assert [f.result() for f in left] == ["left", "left"]
    for image, reply in zip(work, got):
        if image is RED:
            assert reply == alone
        else:
            assert reply.startswith("400: ") and ("decompression bomb" in reply or "not an image" in reply), reply
    assert openai_chat(server, STRIPES) != alone and openai_chat(server, RED) == alone
