"""Pictures for a vision model: untrusted bytes (a file, base64, a data URL) to RGB pixels, with limits.

Every image is checked before Pillow decodes it: the bytes against MAX_BYTES, the format against the few a
model is shown (FORMATS), the width x height the header claims against MAX_PIXELS (a small PNG can claim a
gigapixel: a decompression bomb). Decoded, it is turned upright (EXIF orientation), made RGB (transparency on
white) and shrunk so that neither side exceeds MAX_SIDE; the projector resizes it to what its model expects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
import warnings
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from ..errors import UsageError
from ..fsutil import human_bytes

MAX_BYTES = 20 << 20  # an encoded image: larger than any photo a phone takes
MAX_PIXELS = 50_000_000  # width x height the header may claim (a 50-megapixel photo); Pillow's own limit is 89M
MAX_SIDE = 2048  # the longest side after decoding: more than any projector looks at (they resize to 224..1536)
FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # Pillow's names; an animated GIF or WebP gives its first frame
MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP", "image/gif": "GIF", "image/bmp": "BMP"}


@dataclass(frozen=True)
class Picture:
    """A decoded image: RGB, 3 bytes a pixel, row by row."""

    width: int
    height: int
    rgb: bytes = b""
    name: str = "image"  # where it came from, for messages

    @cached_property
    def digest(self) -> str:
        """Identifies the pixels (the same picture sent twice has the same digest)."""
        return hashlib.sha256(self.rgb).hexdigest()[:16]


def read_image(path: str | Path) -> Picture:
    """Decode the image file at `path` (limits checked before it is read)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise UsageError(f"image {path}: no such file")
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise UsageError(f"image {p.name}: {human_bytes(size)} is more than the {human_bytes(MAX_BYTES)} an image may be")
    return decode(p.read_bytes(), p.name)


def decode(data: bytes, name: str = "image") -> Picture:
    """Decode encoded image bytes (PNG, JPEG, WebP, GIF, BMP) to an upright RGB picture of bounded size."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if len(data) > MAX_BYTES:
        raise UsageError(f"{name}: {human_bytes(len(data))} is more than the {human_bytes(MAX_BYTES)} an image may be")
    if not data:
        raise UsageError(f"{name}: the image is empty")
    im = None
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header alone
            w, h = im.size
            if w <= 0 or h <= 0 or w * h > MAX_PIXELS:
                raise _bomb(name, f"{w}x{h} pixels is")
            im.draft("RGB", (MAX_SIDE, MAX_SIDE))  # JPEG: decode at a smaller scale straight away
            im.load()
            im = ImageOps.exif_transpose(im)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # Pillow's check in open()
            claimed = re.search(r"\((\d+) pixels\)", str(exc))
            raise _bomb(name, f"{int(claimed[1]):,} pixels is" if claimed else "its size is") from None
        except UnidentifiedImageError:
            raise UsageError(f"{name}: not an image edgellm reads ({', '.join(FORMATS)})") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # Pillow's words for a damaged file
            kind = f"{im.format} " if im is not None else ""
            raise UsageError(f"{name}: the {kind}image is damaged ({exc})") from None
    im = _rgb(im)
    im.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    return Picture(im.width, im.height, im.tobytes(), name)


def _bomb(name: str, size: str) -> UsageError:
    return UsageError(
        f"{name}: {size} more than the {MAX_PIXELS:,} pixels an image may have (a decompression bomb, or too large a picture)"
    )


def _rgb(im):
    """RGB, with anything transparent laid on white (as a viewer shows it)."""
    from PIL import Image

    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        back = Image.new("RGB", im.size, (255, 255, 255))
        back.paste(im, mask=im.getchannel("A"))
        return back
    return im if im.mode == "RGB" else im.convert("RGB")


_DATA_URL = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[\w.+-]+)*)(?P<b64>;base64)?,", re.I)


def from_base64(text: str, name: str = "image") -> Picture:
    """Decode a base64 image (as the Anthropic and Ollama APIs send them)."""
    if len(text) > MAX_BYTES * 4 // 3 + 4:  # checked before decoding
        raise UsageError(f"{name}: more than the {human_bytes(MAX_BYTES)} an image may be")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError(f"{name}: not valid base64") from None
    return decode(data, name)


def is_data_url(url: str) -> bool:
    return url[:5].lower() == "data:"


def from_data_url(url: str, name: str = "image") -> Picture:
    """Decode a `data:image/...;base64,...` URL (as the OpenAI API sends images)."""
    m = _DATA_URL.match(url[:200])
    if not m or not m.group("b64"):
        raise UsageError(f"{name}: a data URL of an image must be data:image/<type>;base64,<data>")
    mime = (m.group("mime") or "").lower()
    if mime and mime not in MIME:
        raise UsageError(f"{name}: {mime} is not an image type edgellm reads ({', '.join(MIME)})")
    return from_base64(url[m.end():], name)
