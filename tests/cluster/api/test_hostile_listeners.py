"""Hostile clients against the listeners (issue 16, findings 1, 2 and 4, and fd exhaustion).

Each test lowers the ``listeners.*`` deadlines and caps so that the attack and
the limit that ends it take a second or two, on loopback, against a real node
(``TestNode``: real sockets in this process; a ``tasksd`` process for the fd
limit, which is per process). Every one of them failed before the limits
existed: silent connections were never closed, a stalled frame was buffered
forever, HTTP connections never timed out and had no cap.
"""

from __future__ import annotations

import functools
import re
import resource
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op
from hanzo_tasks.testing import TestNode, http_call, wait_until

from tests.support import NodeProcess

Addr = tuple[str, int]
HELLO = {"client_id": "hostile-test", "sdk_name": "pytest", "sdk_version": "1"}


def zap_call(sock: socket.socket, op: int, body: Any, fid: int) -> dict[str, Any]:
    """One request on a blocking socket and its response body."""
    sock.sendall(Z.encode_frame(Z.REQUEST, op, fid, body))
    reader = Z.FrameReader(1 << 26, Z.SERVER_KINDS)
    while True:
        frame = reader.next_frame()
        if frame is not None:
            return Z.decode_body(frame.body)
        data = sock.recv(65536)
        if not data:
            raise EOFError("closed by the server")
        reader.feed(data)


def zap_client(addr: Addr, timeout: float = 5.0) -> socket.socket:
    """A connection that completed HELLO."""
    sock = socket.create_connection(addr, timeout=timeout)
    assert zap_call(sock, Op.Hello, HELLO, 1)["status"] == 200
    return sock


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (EOF or reset) within ``within`` s; input is discarded."""
    sock.settimeout(within)
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return False


def silent(addr: Addr, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection that never sends a byte, from ``source`` (any 127.x is loopback)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((source, 0))
    sock.connect(addr)
    return sock


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


def limited_node(**listeners: Any) -> TestNode:
    limits = listeners.pop("limits", {})
    return TestNode(config={"listeners": listeners, "limits": limits})


def metric(node: TestNode, listener: str, reason: str) -> float:
    _, text, _ = http_call(node.url, "GET", "/metrics")
    m = re.search(rf'tasks_connection_limits_total{{listener="{listener}",reason="{reason}"}} (\S+)', text)
    return float(m.group(1)) if m else -1.0


# ---------------------------------------------------------------------- ZAP


def test_silent_zap_connections_are_closed_at_the_hello_deadline(sockets: list[socket.socket]) -> None:
    """Finding 1: connections that never send a byte filled max_zap_connections for good."""
    with limited_node(zap_hello_timeout="1s", zap_max_connections_per_address=0,
                      limits={"max_zap_connections": 50}) as node:
        addr = node.zap_address
        assert addr is not None
        sockets.extend(silent(addr) for _ in range(60))
        # the cap holds: past 50, new connections are closed at accept
        assert sum(closed_by_server(s, 0.05) for s in sockets[50:]) == 10
        t0 = time.monotonic()
        assert all(closed_by_server(s, 3.0) for s in sockets[:50])
        assert 0.8 < time.monotonic() - t0 < 2.5
        client = zap_client(addr)
        assert zap_call(client, Op.Health, {}, 2)["status"] == 200
        client.close()
        assert metric(node, "zap", "hello_timeout") >= 50
        assert metric(node, "zap", "max_connections") >= 10


def test_one_address_cannot_take_every_zap_slot(sockets: list[socket.socket]) -> None:
    with limited_node(zap_max_connections_per_address=5) as node:
        addr = node.zap_address
        assert addr is not None
        sockets.extend(silent(addr, "127.0.0.2") for _ in range(8))
        assert sum(closed_by_server(s, 0.2) for s in sockets) == 3
        client = zap_client(addr)  # another address still gets in
        assert zap_call(client, Op.Health, {}, 2)["status"] == 200
        client.close()
        assert metric(node, "zap", "per_address") == 3


def test_a_large_frame_before_hello_is_refused_from_its_length_prefix() -> None:
    """Finding 2: a 15 MiB frame was buffered whole before HELLO was checked."""
    with limited_node() as node:
        addr = node.zap_address
        assert addr is not None
        sock = socket.create_connection(addr, timeout=3.0)
        sock.sendall(struct.pack(">IBBHI", 15 << 20, 1, 1, Op.Hello, 9) + b"\x80" * 1000)
        reader = Z.FrameReader(1 << 20, Z.SERVER_KINDS)
        while (frame := reader.next_frame()) is None:
            reader.feed(sock.recv(65536))  # a timeout here: the server waited for the body
        body = Z.decode_body(frame.body)
        assert (frame.frame_id, body["status"], body["error"]["code"]) == (9, 413, "too_large")
        assert "before HELLO" in body["error"]["message"]
        assert closed_by_server(sock, 5.0)
        sock.close()
        # after HELLO, max_frame applies: a 1 MiB frame is fine
        client = zap_client(addr)
        pad = {"pad": "x" * (1 << 20)}
        assert zap_call(client, Op.Health, pad, 2)["status"] == 200
        client.close()


def test_a_stalled_partial_frame_is_dropped_after_the_frame_deadline() -> None:
    """Finding 2: a partial frame that stalls held its buffer (and connection) forever."""
    with limited_node(zap_frame_timeout="1s") as node:
        addr = node.zap_address
        assert addr is not None
        zap = node.node._zap
        client = zap_client(addr)
        frame = Z.encode_frame(Z.REQUEST, Op.Health, 2, {"pad": "x" * (2 << 20)})
        client.sendall(frame[: len(frame) // 2])
        wait_until(lambda: zap.connections == 1, what="the connection counted")
        t0 = time.monotonic()
        assert closed_by_server(client, 4.0)
        assert 0.8 < time.monotonic() - t0 < 3.0
        wait_until(lambda: zap.connections == 0, what="the stalled connection released")
        assert metric(node, "zap", "frame_timeout") == 1
        # a stranger trickling its HELLO is bounded by the HELLO deadline as well
        client.close()


def test_idle_authenticated_zap_connections_close_but_waiting_workers_do_not() -> None:
    with limited_node(zap_idle_timeout="1s") as node:
        addr = node.zap_address
        assert addr is not None
        idle = zap_client(addr)
        worker = zap_client(addr)
        sub = zap_call(worker, Op.SubscribeWorkflowTasks, {"task_queue": "q", "max_concurrent": 1}, 2)
        assert sub["status"] == 200, sub
        assert closed_by_server(idle, 4.0)
        assert not closed_by_server(worker, 2.5)  # a worker waiting for pushes is not idle
        assert zap_call(worker, Op.Health, {}, 3)["status"] == 200
        worker.close()
        idle.close()
        assert metric(node, "zap", "idle_timeout") == 1


# ---------------------------------------------------------------------- HTTP


def http_addr(node: TestNode) -> Addr:
    host, port = node.url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def test_idle_http_connections_time_out_and_the_cap_answers_503(sockets: list[socket.socket]) -> None:
    """Finding 4: 3,000 idle HTTP connections were all open 30 s later, with no cap."""
    with limited_node(http_keepalive_timeout="1s", http_max_connections=20,
                      http_max_connections_per_address=0) as node:
        addr = http_addr(node)
        sockets.extend(silent(addr) for _ in range(25))
        for s in sockets[20:]:
            s.settimeout(2.0)
            head = s.recv(4096)
            assert head.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in head
        t0 = time.monotonic()
        assert all(closed_by_server(s, 3.0) for s in sockets[:20])
        assert time.monotonic() - t0 < 2.5
        assert http_call(node.url, "GET", "/healthz")[0] == 200
        assert metric(node, "http", "max_connections") == 5


def test_headers_that_never_end_and_bodies_that_stall_are_cut_off() -> None:
    with limited_node(http_keepalive_timeout="1s", http_body_timeout="1s") as node:
        addr = http_addr(node)
        slow = socket.create_connection(addr, timeout=5)
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        assert closed_by_server(slow, 3.0)
        body = socket.create_connection(addr, timeout=5)
        body.sendall(b"POST /v1/tasks/namespaces HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"name\": ")
        got = b""
        while chunk := body.recv(65536):
            got += chunk
        assert got.startswith(b"HTTP/1.1 408 "), got
        assert b"request_timeout" in got
        slow.close()
        body.close()
        assert metric(node, "http", "body_timeout") == 1


# ---------------------------------------------------------------------- fd limit


def test_a_flood_of_http_connections_under_a_low_fd_limit_leaves_zap_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sockets: list[socket.socket],
) -> None:
    """Finding 4: at the fd limit accept() failed everywhere, ZAP included. With the caps
    fitted into RLIMIT_NOFILE, HTTP answers 503 past its share and ZAP still accepts."""

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    monkeypatch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=low_fd_limit))
    node = NodeProcess(tmp_path / "n1", ["--zap", "127.0.0.1:0"])
    try:
        node.start()
        m = re.search(r"serving http=\S+ zap=(\S+)", node.log())
        assert m, node.log()
        host, port = m.group(1).rsplit(":", 1)
        zap = (host, int(port))
        addr = http_addr(node)  # type: ignore[arg-type]
        sockets.extend(silent(addr, "127.0.0.2") for _ in range(300))
        refused = 0
        for s in sockets:
            s.settimeout(0.05)
            try:
                refused += s.recv(64).startswith(b"HTTP/1.1 503")
            except TimeoutError:
                pass
        assert refused > 200  # the cap (fitted to 256 fds) answered them; none failed to accept
        client = zap_client(zap)
        assert zap_call(client, Op.Health, {}, 2)["status"] == 200
        client.close()
        log = node.log()
        assert "out of system resource" not in log and "Too many open files" not in log
        assert "the fd limit is 256" in log
        for s in sockets:
            s.close()
        sockets.clear()
        wait_until(lambda: node.get("/healthz")[0] == 200, timeout=10, what="HTTP serving again")
    finally:
        node.kill()
