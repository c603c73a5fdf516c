"""Memory a stranger can pin before HELLO, measured on a real ``tasksd`` (issue 16, finding 2).

The resident set of the node process (``VmRSS`` and its peak ``VmHWM`` from
``/proc/<pid>/status``) is read before and while strangers hold connections
that never complete HELLO:

* 200 connections each sending the first part of a frame under the
  unauthenticated cap (``listeners.zap_max_unauthenticated_frame``, 64 KiB) and
  going silent: the node holds what arrived, and little else;
* 20 connections each sending 15 MiB of a 16 MiB frame before HELLO: refused
  from the length prefix (413), the bytes are read and dropped, never
  buffered. The same attack took the node from 60 to 367 MB before.

The figures are printed (``pytest -s``) and bounded. The HELLO deadline is
long (60 s) so that nothing is freed by a timeout while it is measured.
"""

from __future__ import annotations

import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.zap import Op

from tests.support import NodeProcess

pytestmark = pytest.mark.timeout(120)

KIB = 1024
SLACK = 4 * 1024 * KIB
"""Fixed allowance for the allocator's arenas and the loop's own growth."""
PER_CONNECTION = 8 * KIB
"""What a connection may cost beyond the bytes of its partial frame: transport,
stream reader and writer, the connection's task and record."""
READ_CHUNK = 320 * KIB
"""One socket read of the event loop (256 KiB) plus a stream's read-ahead (2 x 16 KiB)."""


def status_kib(pid: int, field: str) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    assert m, text
    return int(m.group(1))


@pytest.fixture
def zap_proc(tmp_path: Path) -> Iterator[tuple[NodeProcess, tuple[str, int]]]:
    node = NodeProcess(tmp_path / "n1", ["--zap", "127.0.0.1:0", "--listeners-zap-hello-timeout", "60s"])
    try:
        node.start()
        m = re.search(r"serving http=\S+ zap=(\S+)", node.log())
        assert m, node.log()
        host, port = m.group(1).rsplit(":", 1)
        yield node, (host, int(port))
    finally:
        node.kill()


def warm_up(addr: tuple[str, int]) -> None:
    """Exercise the paths under test once, so their first-use allocations are not counted."""
    for _ in range(3):
        s = socket.create_connection(addr, timeout=5)
        s.sendall(Z.encode_frame(Z.REQUEST, Op.Hello, 1, {"client_id": "warm", "sdk_name": "t", "sdk_version": "1"}))
        s.recv(65536)
        s.close()
        s = socket.create_connection(addr, timeout=5)
        s.sendall(struct.pack(">IBBHI", 1000, 1, 1, Op.Hello, 2) + b"\x80" * 100)
        time.sleep(0.05)
        s.close()


def settle(pid: int) -> int:
    """VmRSS once it stops moving (the node has read what was sent)."""
    last = status_kib(pid, "VmRSS")
    for _ in range(40):
        time.sleep(0.1)
        now = status_kib(pid, "VmRSS")
        if abs(now - last) < 64:
            return now
        last = now
    return last


def hold_partial_frames(addr: tuple[str, int], n: int, claimed: int, sent: int) -> list[socket.socket]:
    """``n`` connections, each sending the header of a ``claimed``-byte HELLO frame
    and ``sent`` bytes of its body, then nothing."""
    socks = []
    head = struct.pack(">IBBHI", claimed, 1, 1, Op.Hello, 1)
    for _ in range(n):
        s = socket.create_connection(addr, timeout=5)
        s.sendall(head + b"\x00" * sent)
        socks.append(s)
    return socks


@pytest.mark.parametrize(("claimed", "sent"), [(4 * KIB, 1 * KIB), (63 * KIB, 60 * KIB)],
                         ids=["1KiB-of-4KiB", "60KiB-of-63KiB"])
def test_partial_frames_before_hello_cost_their_bytes_and_a_few_kb(
    zap_proc: tuple[NodeProcess, tuple[str, int]], claimed: int, sent: int,
) -> None:
    node, addr = zap_proc
    assert node.proc is not None
    pid = node.proc.pid
    warm_up(addr)
    before = settle(pid)
    socks = hold_partial_frames(addr, 200, claimed, sent)
    try:
        during = settle(pid)
        assert node.get("/healthz")[0] == 200
        assert all(s.fileno() >= 0 for s in socks)
        # still open: nothing was freed by a deadline while measuring
        _, text = node.get("/metrics")
        assert re.search(r"^tasks_zap_connections (\S+)", str(text), re.M).group(1) == "200.0"  # type: ignore[union-attr]
    finally:
        for s in socks:
            s.close()
    growth = (during - before) * KIB
    per = growth / 200
    print(f"\n200 connections holding {sent // KIB} KiB of a {claimed // KIB} KiB frame before HELLO: "
          f"VmRSS {before} -> {during} kB, +{growth / KIB:.0f} kB, {per / KIB:.1f} KiB per connection "
          f"(of which {sent / KIB:.0f} KiB are the bytes sent)")
    assert growth <= 200 * (sent + PER_CONNECTION) + SLACK


def test_large_frames_before_hello_are_refused_from_the_length_prefix_and_rss_stays_flat(
    zap_proc: tuple[NodeProcess, tuple[str, int]],
) -> None:
    node, addr = zap_proc
    assert node.proc is not None
    pid = node.proc.pid
    warm_up(addr)
    before = settle(pid)
    peak_before = status_kib(pid, "VmHWM")
    answers: list[bytes] = []
    peaks: list[int] = []
    chunk = b"\x80" * (1 << 20)

    def attack() -> None:
        s = socket.create_connection(addr, timeout=10)
        try:
            s.sendall(struct.pack(">IBBHI", 16 << 20, 1, 1, Op.Hello, 7))
            for _ in range(15):  # 15 MiB of the 16 MiB body, then silence
                s.sendall(chunk)
        except OSError:
            pass  # refused: the node closed the connection under our feet
        try:
            s.settimeout(5)
            answers.append(s.recv(65536))
        except OSError:
            answers.append(b"")
        finally:
            s.close()

    threads = [threading.Thread(target=attack) for _ in range(20)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peaks.append(status_kib(pid, "VmRSS"))
        time.sleep(0.02)
    for t in threads:
        t.join()
    after = settle(pid)
    peak = max(peaks + [after])
    hwm = status_kib(pid, "VmHWM")
    print(f"\n20 connections sending 15 MiB of a 16 MiB frame before HELLO: VmRSS {before} kB before, "
          f"peak {peak} kB while attacked, {after} kB after; VmHWM {peak_before} -> {hwm} kB "
          f"(the old code: +300 MB)")
    refused = [a for a in answers if a]
    assert len(refused) >= 18, answers  # each got its 413 (a reset may eat one or two)
    for a in refused:
        frame = Z.FrameReader(1 << 20, Z.SERVER_KINDS)
        frame.feed(a)
        f = frame.next_frame()
        assert f is not None
        body = Z.decode_body(f.body)
        assert body["status"] == 413 and "before HELLO" in body["error"]["message"]
    # While the refused bytes are read and dropped (LINGER_TIMEOUT, so that the
    # 413 is not lost to a reset), each connection holds at most one socket read
    # of the loop (256 KiB) and its stream's read-ahead: a transient, not the frame.
    assert (peak - before) * KIB <= 20 * READ_CHUNK + SLACK
    assert (after - before) * KIB <= 2 * SLACK  # freed, though the allocator may keep some
    assert node.get("/healthz")[0] == 200
