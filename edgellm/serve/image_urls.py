"""Fetching a picture a request names by URL, where the server allows it (`serve --allow-image-urls`).

A URL in a request makes the server a client of whatever it names, so only http(s) is fetched, within a time,
size and redirect limit, and never from an address that is not public: every address a host name resolves to
is checked (loopback, private, link-local such as cloud metadata services, reserved, multicast), the connection
goes to the very address that was checked (a second lookup could answer otherwise), and each redirect is
checked again the same way.
"""

from __future__ import annotations

import http.client
import ipaddress
import socket
import ssl
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urljoin, urlsplit

from ..engine import images
from ..errors import UsageError
from ..fsutil import human_bytes

PORTS = {"http": 80, "https": 443}
REDIRECTS = (301, 302, 303, 307, 308)
CHUNK = 64 << 10

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def public(ip: IPAddress) -> bool:
    """An address on the public internet (an IPv4 address inside IPv6 judged as itself)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


@dataclass(frozen=True)
class UrlPolicy:
    max_bytes: int = images.MAX_BYTES
    timeout_s: float = 10.0  # the whole fetch, redirects included
    max_redirects: int = 3
    allowed: Callable[[IPAddress], bool] = field(default=public)


class _Pinned(http.client.HTTPConnection):
    """A connection to one checked address, whatever the host name would resolve to now."""

    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self._ip = ip

    def connect(self) -> None:
        self.sock = socket.create_connection((self._ip, self.port), self.timeout)


class _PinnedTLS(http.client.HTTPSConnection):
    def __init__(self, host: str, port: int, ip: str, timeout: float):
        super().__init__(host, port, timeout=timeout, context=ssl.create_default_context())
        self._ip = ip

    def connect(self) -> None:
        sock = socket.create_connection((self._ip, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


def _addresses(host: str, port: int, policy: UrlPolicy, shown: str) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UsageError(f"image URL {shown}: the host does not resolve ({exc})") from None
    found = list(dict.fromkeys(i[4][0] for i in infos))
    for a in found:
        if not policy.allowed(ipaddress.ip_address(a.split("%")[0])):
            raise UsageError(f"image URL {shown}: {host} is at {a}, a loopback, private, link-local or reserved address, which is not fetched")
    return found


def fetch(url: str, policy: UrlPolicy = UrlPolicy()) -> bytes:
    """The body of an http(s) URL, within `policy`; anything else is one UsageError line."""
    deadline = time.monotonic() + policy.timeout_s
    shown = url[:100]
    for _hop in range(policy.max_redirects + 1):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in PORTS:
            raise UsageError(f"image URL {shown}: only http and https URLs are fetched, not {scheme or 'this'!r}")
        if parts.username or parts.password:
            raise UsageError(f"image URL {shown}: a URL with a user name or password is not fetched")
        try:
            host, port = parts.hostname, parts.port or PORTS[scheme]
        except ValueError:
            raise UsageError(f"image URL {shown}: the port is not a number") from None
        if not host:
            raise UsageError(f"image URL {shown}: no host")
        ip = _addresses(host, port, policy, shown)[0]
        left = deadline - time.monotonic()
        if left <= 0:
            break
        conn = (_PinnedTLS if scheme == "https" else _Pinned)(host, port, ip, left)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            conn.request("GET", path, headers={"User-Agent": "edgellm", "Accept": "image/*"})
            sock = conn.sock  # the connection lets go of it once the response is under way
            resp = conn.getresponse()
            if resp.status in REDIRECTS:
                location = resp.getheader("Location")
                if not location:
                    raise UsageError(f"image URL {shown}: a redirect without a Location")
                url = urljoin(url, location)
                shown = url[:100]
                continue
            if resp.status != 200:
                raise UsageError(f"image URL {shown}: the server answered {resp.status} {resp.reason}")
            length = resp.getheader("Content-Length")
            if length and length.isdigit() and int(length) > policy.max_bytes:
                raise UsageError(f"image URL {shown}: {human_bytes(int(length))} is more than the {human_bytes(policy.max_bytes)} an image may be")
            return _body(sock, resp, policy, deadline, shown)
        except (OSError, http.client.HTTPException) as exc:
            if isinstance(exc, (TimeoutError, socket.timeout)) or time.monotonic() >= deadline:
                break
            raise UsageError(f"image URL {shown}: {exc or type(exc).__name__}") from None
        finally:
            conn.close()
    else:
        raise UsageError(f"image URL {shown}: more than {policy.max_redirects} redirects")
    raise UsageError(f"image URL {shown}: no answer within {policy.timeout_s:g} s")


def _body(sock, resp, policy: UrlPolicy, deadline: float, shown: str) -> bytes:
    out, size = [], 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        sock.settimeout(left)
        chunk = resp.read1(CHUNK)
        if not chunk:
            return b"".join(out)
        size += len(chunk)
        if size > policy.max_bytes:
            raise UsageError(f"image URL {shown}: more than the {human_bytes(policy.max_bytes)} an image may be")
        out.append(chunk)
