"""Decoding untrusted images: real files made by Pillow, a real decompression bomb, files that are no image."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from edgellm.engine import images
from edgellm.errors import UsageError


def encoded(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48, mode: str = "RGB") -> Image.Image:
    im = Image.new("RGB", (w, h))
    im.putdata([(x * 4 % 256, y * 5 % 256, (x + y) % 256) for y in range(h) for x in range(w)])
    return im.convert(mode)


def bomb_png(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with one compressed row of zeros: small on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 1, 0, 0, 0, 0)  # 1-bit greyscale
    rows = zlib.compress(b"\0" * (1 + (w + 7) // 8) * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_each_format_decodes_to_rgb_of_its_size(fmt):
    pic = images.decode(encoded(gradient(), fmt), f"x.{fmt.lower()}")
    assert (pic.width, pic.height) == (64, 48)
    assert len(pic.rgb) == 64 * 48 * 3
    if fmt in ("PNG", "BMP"):  # lossless: the very pixels
        assert pic.rgb == gradient().tobytes()


def test_exif_orientation_turns_the_picture_upright():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise when shown
    pic = images.decode(encoded(gradient(64, 48), "JPEG", exif=exif))
    assert (pic.width, pic.height) == (48, 64)


def test_transparency_lies_on_white_and_grey_becomes_rgb():
    clear = Image.new("RGBA", (8, 8), (255, 0, 0, 0))
    assert images.decode(encoded(clear, "PNG")).rgb == b"\xff" * 8 * 8 * 3
    grey = images.decode(encoded(gradient(mode="L"), "PNG"))
    assert len(grey.rgb) == 64 * 48 * 3


def test_a_large_picture_is_shrunk_to_the_longest_side():
    big = Image.new("RGB", (images.MAX_SIDE * 2, images.MAX_SIDE // 2), (10, 200, 30))
    pic = images.decode(encoded(big, "PNG"))
    assert (pic.width, pic.height) == (images.MAX_SIDE, images.MAX_SIDE // 4)
    assert pic.rgb[:3] == bytes((10, 200, 30))


def test_an_animated_gif_gives_its_first_frame():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    pic = images.decode(buf.getvalue())
    assert pic.rgb[:3] == bytes((255, 0, 0))


@pytest.mark.parametrize("w,h,claim", [(100_000, 100_000, "10,000,000,000 pixels"), (1 << 20, 60, "1048576x60 pixels")])
def test_a_decompression_bomb_is_refused_from_its_header(w, h, claim):
    data = bomb_png(w, h)
    assert len(data) < 50_000
    with pytest.raises(UsageError, match=f"{claim} is more than .* decompression bomb") as e:
        images.decode(data, "bomb.png")
    assert "\n" not in str(e.value)


def test_pillows_own_bomb_limit_is_one_line_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # Pillow refuses above twice this, in open()
    with pytest.raises(UsageError, match="3,072 pixels is more than .* decompression bomb"):
        images.decode(encoded(gradient(64, 48), "PNG"))


@pytest.mark.parametrize(
    "data,why",
    [
        (b"%PDF-1.4 not a picture", "not an image edgellm reads"),
        (b"", "empty"),
        (encoded(gradient(), "PNG")[:70], "damaged"),
        (encoded(gradient(), "TIFF"), "not an image edgellm reads"),  # a format Pillow reads, but not one of ours
    ],
    ids=["pdf", "empty", "truncated", "tiff"],
)
def test_what_is_no_image_is_one_line(data, why):
    with pytest.raises(UsageError, match=why) as e:
        images.decode(data, "x")
    assert "\n" not in str(e.value)


def test_the_byte_limit_is_checked_before_reading(tmp_path, monkeypatch):
    monkeypatch.setattr(images, "MAX_BYTES", 100)
    f = tmp_path / "big.png"
    f.write_bytes(encoded(gradient(), "PNG"))
    with pytest.raises(UsageError, match="big.png: .* is more than the 100 B"):
        images.read_image(f)
    with pytest.raises(UsageError, match="more than the 100 B"):
        images.from_base64(base64.b64encode(f.read_bytes()).decode())
    with pytest.raises(UsageError, match="no such file"):
        images.read_image(tmp_path / "missing.png")


def test_base64_and_data_urls():
    raw = encoded(gradient(), "PNG")
    b64 = base64.b64encode(raw).decode()
    assert images.from_base64(b64).rgb == gradient().tobytes()
    assert images.from_data_url("data:image/png;base64," + b64).rgb == gradient().tobytes()
    assert images.from_base64(b64[:40] + "\n" + b64[40:]).width == 64  # line breaks are allowed
    with pytest.raises(UsageError, match="not valid base64"):
        images.from_base64("@@@")
    with pytest.raises(UsageError, match="data:image/<type>;base64"):
        images.from_data_url("data:image/png," + b64)
    with pytest.raises(UsageError, match="text/html is not an image type"):
        images.from_data_url("data:text/html;base64," + b64)


def test_the_digest_tells_pictures_apart():
    a = images.decode(encoded(gradient(), "PNG"))
    b = images.decode(encoded(gradient().transpose(Image.Transpose.FLIP_LEFT_RIGHT), "PNG"))
    assert a.digest == images.decode(encoded(gradient(), "BMP")).digest
    assert a.digest != b.digest
