"""A TLS handshake that never ends cannot hold an HTTPS connection (issue 16).

Over HTTPS, aiohttp and the connection gate see a connection only once its
TLS handshake is done, and ``TCPSite`` sets no handshake timeout: a client
that connected and never sent its ClientHello (or sent half of one) was held
for asyncio's default of 60 s. ``HttpSite`` bounds the handshake by the
keep-alive timeout (at most 10 s); here it is lowered to 1 s.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from hanzo_tasks.cluster.api.http.listener import TLS_HANDSHAKE_TIMEOUT
from hanzo_tasks.testing import TestNode

from tests.tls_support import Ca

pytestmark = pytest.mark.timeout(60)


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (EOF or reset), or None if it did not in time."""
    t0 = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(65536):
            pass
    except (ConnectionResetError, BrokenPipeError):
        pass
    except TimeoutError:
        return None
    return time.monotonic() - t0


def client_hello(ca: Ca) -> bytes:
    """The first flight of a real TLS client (its ClientHello), from a memory BIO."""
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def test_an_https_connection_that_never_completes_its_handshake_is_closed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    ca = Ca(tmp_path / "pki")
    leaf = ca.issue("node")
    config = {"tls.cert_file": str(leaf.cert), "tls.key_file": str(leaf.key),
              "listeners.http_keepalive_timeout": "1s"}
    caplog.set_level(logging.WARNING)
    with TestNode(config=config) as node:
        assert node.url.startswith("https://")
        host, port = node.url.split("//", 1)[1].rsplit(":", 1)
        silent = socket.create_connection((host, int(port)))
        half = socket.create_connection((host, int(port)))
        hello = client_hello(ca)
        half.sendall(hello[: len(hello) // 2])  # half a ClientHello, then nothing
        for sock in (silent, half):
            took = closed_within(sock, 5.0)
            assert took is not None, "the connection was held past 5 s (asyncio's default: 60 s)"
            assert took < 3.0
            sock.close()
        # real clients are served throughout
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        with urllib.request.urlopen(node.url + "/healthz", timeout=5, context=ctx) as r:
            assert r.status == 200
        assert node.node._runner.tls_handshake_timeout == 1.0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_the_handshake_bound_defaults_to_ten_seconds(tmp_path: Path) -> None:
    ca = Ca(tmp_path / "pki")
    leaf = ca.issue("node")
    with TestNode(config={"tls.cert_file": str(leaf.cert), "tls.key_file": str(leaf.key)}) as node:
        assert node.node._runner.tls_handshake_timeout == TLS_HANDSHAKE_TIMEOUT == 10.0
        servers = [s._server for s in node.node._runner.sites]
        assert all(srv is not None and srv._ssl_handshake_timeout == 10.0 for srv in servers)
