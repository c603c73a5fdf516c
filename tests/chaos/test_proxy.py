"""The peer proxy: it learns who dials from the hello, a blackhole keeps the
connection open without delivering anything, and a heal resumes it."""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import msgpack
import pytest

from chaos.ports import pick_ports, release
from chaos.proxy import UNKNOWN, ProxyHub, parse_hello


def hello(node_id: str) -> bytes:
    """What a dialer sends first: its nonce, then a hello frame (MAC not checked by the proxy)."""
    body = msgpack.packb({"node_id": node_id, "cluster": ""})
    header = struct.pack(">BBHQ", 1, 5, 0, 1)
    frame = header + body + b"\0" * 16
    return os.urandom(16) + struct.pack(">I", len(frame)) + frame


class Target:
    """A stand-in peer listener: answers the nonce, then records what arrives."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", port), reuse_port=False)
        self.received = bytearray()
        self.closed = threading.Event()
        self.accepted = threading.Event()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        self._conns.append(conn)
        self.accepted.set()
        conn.recv(16)
        conn.sendall(os.urandom(16))
        while True:
            try:
                data = conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self.closed.set()
                return
            self.received += data

    def close(self) -> None:
        for c in self._conns:
            c.close()
        self.sock.close()


@pytest.fixture
def hub() -> Iterator[tuple[ProxyHub, int, int]]:
    listen, upstream = pick_ports(2)
    h = ProxyHub().start()
    h.add_target("b", listen, upstream)
    yield h, listen, upstream
    h.stop()
    release([listen, upstream])


def dial(port: int, src: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    first = hello(src)
    s.sendall(first[:16])
    assert len(s.recv(16)) == 16  # the acceptor's nonce came through the proxy
    s.sendall(first[16:])
    return s


def wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_parse_hello() -> None:
    data = hello("n7")
    assert parse_hello(data) == "n7"
    assert parse_hello(data[:20]) is None
    assert parse_hello(data[:-1]) is None
    assert parse_hello(os.urandom(16) + struct.pack(">I", 1 << 20)) == UNKNOWN


def test_blackhole_keeps_the_connection_open_and_heal_resumes(hub) -> None:
    h, listen, upstream = hub
    target = Target(upstream)
    s = dial(listen, "a")
    try:
        s.sendall(b"before")
        assert wait_for(lambda: target.received.endswith(b"before"))
        assert wait_for(lambda: ("a", "b", False) in h.connections())

        h.block([("a", "b")])
        s.sendall(b"held")
        time.sleep(0.5)
        assert not target.received.endswith(b"held"), "a blackholed link delivered data"
        assert not target.closed.is_set(), "the blackhole closed the target's side"
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(1)  # no EOF, no RST: the dialer's side is still open too

        h.heal()
        assert wait_for(lambda: target.received.endswith(b"beforeheld")), target.received
        s.sendall(b"after")
        assert wait_for(lambda: target.received.endswith(b"after"))
    finally:
        s.close()
        target.close()


def test_drop_mode_loses_data_and_closes_on_heal(hub) -> None:
    h, listen, upstream = hub
    target = Target(upstream)
    s = dial(listen, "a")
    try:
        assert wait_for(lambda: ("a", "b", False) in h.connections())
        h.block([("a", "b")], mode="drop")
        s.sendall(b"lost")
        assert wait_for(lambda: ("a", "b", True) in h.connections())
        assert not target.closed.is_set()
        h.heal()
        assert wait_for(target.closed.is_set), "a connection with a hole in it must be closed on heal"
        assert b"lost" not in target.received
    finally:
        s.close()
        target.close()


def test_other_links_are_not_affected(hub) -> None:
    h, listen, upstream = hub
    target = Target(upstream)
    h.block([("c", "b"), ("b", "c")])
    s = dial(listen, "a")
    try:
        s.sendall(b"free")
        assert wait_for(lambda: target.received.endswith(b"free"))
    finally:
        s.close()
        target.close()


def test_dialing_a_dead_target_closes_at_once(hub) -> None:
    _, listen, _ = hub  # nothing listens upstream
    s = socket.create_connection(("127.0.0.1", listen), timeout=5)
    try:
        s.sendall(hello("a")[:16])
        assert s.recv(16) == b""
    finally:
        s.close()


def test_throttle_slows_a_link_without_losing_bytes(hub) -> None:
    h, listen, upstream = hub
    target = Target(upstream)
    s = dial(listen, "a")
    try:
        assert wait_for(lambda: ("a", "b", False) in h.connections())
        h.throttle([("a", "b")], rate=200_000)
        assert h.throttled() == {("a", "b"): 200_000}
        data = os.urandom(300_000)
        t0 = time.monotonic()
        s.sendall(data)
        assert wait_for(lambda: target.received.endswith(data), timeout=10)
        took = time.monotonic() - t0
        assert took >= 0.9, f"300 kB through a 200 kB/s link took {took:.2f}s"
        h.heal()
        assert h.throttled() == {}
        t0 = time.monotonic()
        s.sendall(data)
        assert wait_for(lambda: target.received.endswith(data + data) or target.received.count(data[:64]) >= 2)
        assert time.monotonic() - t0 < 0.9
    finally:
        s.close()
        target.close()
