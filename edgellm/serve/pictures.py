"""A request's pictures decoded (off the event loop): base64 and data: URLs always, http(s) URLs where allowed."""

from __future__ import annotations

from collections.abc import Sequence

from ..engine import images
from ..engine.images import Picture
from ..errors import UsageError
from .errors import bad_request
from .image_urls import UrlPolicy, fetch
from .schemas import ImageRef


def decode_all(refs: Sequence[ImageRef], allow_urls: bool, policy: UrlPolicy = UrlPolicy()) -> list[Picture]:
    """Each picture of a request, or a 400 naming the field of the first that is not a usable image."""
    out = []
    for r in refs:
        try:
            if not r.is_url:
                out.append(images.from_base64(r.data, r.where))
            elif images.is_data_url(r.data):
                out.append(images.from_data_url(r.data, r.where))
            elif not allow_urls:
                raise UsageError(f"{r.where}: this server fetches no image URLs: send the image as base64 data "
                                 "(a data:image/...;base64 URL), or start the server with --allow-image-urls")
            else:
                out.append(images.decode(fetch(r.data, policy), r.where))
        except UsageError as exc:
            raise bad_request(str(exc), r.where, "invalid_image") from None
    return out
