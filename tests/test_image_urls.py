"""Fetching pictures by URL: a local HTTP server serves pictures, large and slow bodies, redirects; the default
policy refuses its loopback address outright, and a policy that lets loopback through (as only a test would) shows
the size, time and redirect limits and that each redirect is checked again."""

from __future__ import annotations

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgellm.errors import UsageError
from edgellm.serve.image_urls import UrlPolicy, fetch, public

PICTURE = b"\x89PNG pretend picture bytes"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        port = self.server.server_address[1]
        routes = {
            "/cat.png": (200, {}, PICTURE),
            "/big": (200, {}, b"x" * 5000),
            "/big-unsized": (200, {"Transfer-Encoding": "chunked"}, None),
            "/hop": (302, {"Location": "/cat.png"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/to-private": (302, {"Location": "http://10.1.2.3/cat.png"}, b""),
            "/to-metadata": (301, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
            "/to-localhost-name": (302, {"Location": f"http://localhost:{port}/cat.png"}, b""),
            "/missing": (404, {}, b"no"),
        }
        if self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"a")
            self.wfile.flush()
            self.server.release.wait(10)
            return
        status, headers, body = routes.get(self.path, (404, {}, b""))
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        if body is None:  # chunked, no length: the limit must count what arrives
            self.end_headers()
            for _ in range(10):
                self.wfile.write(b"3E8\r\n" + b"y" * 1000 + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.release = threading.Event()
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.release.set()
    server.shutdown()


LOOPBACK = UrlPolicy(max_bytes=1000, timeout_s=2.0, allowed=lambda ip: ip.is_loopback)


def test_the_default_policy_refuses_loopback_and_names_the_address(site):
    with pytest.raises(UsageError, match="127.0.0.1, a loopback, private, link-local or reserved address"):
        fetch(site + "/cat.png")
    with pytest.raises(UsageError, match="loopback, private"):
        fetch(site.replace("127.0.0.1", "localhost") + "/cat.png")


@pytest.mark.parametrize("address", ["127.0.0.1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                                     "224.0.0.1", "255.255.255.255", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"])
def test_addresses_that_are_not_public(address):
    assert not public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c", "::ffff:93.184.215.14"])
def test_public_addresses(address):
    assert public(ipaddress.ip_address(address))


def test_a_picture_and_a_redirect_within_the_limits(site):
    assert fetch(site + "/cat.png", LOOPBACK) == PICTURE
    assert fetch(site + "/hop", LOOPBACK) == PICTURE


@pytest.mark.parametrize("path,why", [
    ("/big", "4.88 KiB is more than the 1000 B"),
    ("/big-unsized", "more than the 1000 B"),
    ("/loop", "more than 3 redirects"),
    ("/to-private", "10.1.2.3, a loopback, private"),
    ("/to-metadata", "169.254.169.254, a loopback, private"),
    ("/to-file", "only http and https URLs are fetched, not 'file'"),
    ("/missing", "answered 404"),
])
def test_limits_and_each_redirect_checked_again(site, path, why):
    with pytest.raises(UsageError, match=why) as e:
        fetch(site + path, LOOPBACK)
    assert "\n" not in str(e.value)


def test_a_redirect_to_a_name_is_resolved_and_checked_again(site):
    only_ipv4_loopback = UrlPolicy(allowed=lambda ip: str(ip) == "127.0.0.1")
    try:
        assert fetch(site + "/to-localhost-name", only_ipv4_loopback) == PICTURE
    except UsageError as exc:  # where localhost resolves to ::1 too, that address is refused
        assert "::1" in str(exc)


def test_a_slow_body_ends_at_the_time_limit(site):
    t0 = time.monotonic()
    with pytest.raises(UsageError, match="no answer within 0.5 s"):
        fetch(site + "/slow", UrlPolicy(timeout_s=0.5, allowed=lambda ip: ip.is_loopback))
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("url,why", [
    ("ftp://example.com/a.png", "not 'ftp'"),
    ("gopher://127.0.0.1:70/", "not 'gopher'"),
    ("http://user:pw@example.com/a.png", "user name or password"),
    ("http:///a.png", "no host"),
    ("http://example.com:notaport/a.png", "port is not a number"),
    ("http://no-such-host.invalid/a.png", "does not resolve"),
])
def test_urls_refused_before_any_connection(url, why):
    with pytest.raises(UsageError, match=why):
        fetch(url)
