"""The peer port (SPEC §8.7) on real loopback sockets.

Muxes talk to each other for the happy paths; hostile and broken peers are
played by ``RawPeer``, a deliberately independent, minimal implementation of
the dialer's side of the handshake and framing written from the spec, so a
mistake shared by both ends of ``PeerMux`` cannot hide here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import socket
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import msgpack
import pytest
from hanzo_tasks.protocol.channels import EVENTS, FORWARD, MEMBERSHIP, MIGRATE, RAFT
from hanzo_tasks.replication.raft.transport import PeerMux
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SECRET = b"correct horse battery staple 0123456789"
WRONG = b"incorrect horse battery staple 987654321"
pytestmark = pytest.mark.timeout(30)


def run(coro: Coroutine[Any, Any, Any], timeout: float = 15.0) -> Any:
    """Run one test coroutine on a fresh loop, bounded in time."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def wait_until(
    cond: Callable[[], bool], timeout: float = 5.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def dead_address() -> str:
    """A loopback address nobody listens on (dials to it fail fast)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"127.0.0.1:{port}"


class Sink:
    """Collects delivered frames; asserts they arrive on the loop thread."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, int, int, bytes]] = []
        self.loop_thread = threading.get_ident()

    def __call__(self, peer: str, channel: int, group: int, body: bytes) -> None:
        assert threading.get_ident() == self.loop_thread
        assert isinstance(body, bytes)
        self.frames.append((peer, channel, group, body))

    def bodies(self, peer: str) -> list[bytes]:
        return [f[3] for f in self.frames if f[0] == peer]


async def make_mux(
    node_id: str,
    peers: dict[str, str] | None = None,
    *,
    secret: bytes = SECRET,
    listen: str = "127.0.0.1:0",
    **kw: Any,
) -> tuple[PeerMux, Sink]:
    sink = Sink()
    mux = PeerMux(node_id, listen, peers or {}, secret, on_frame=sink, **kw)
    await mux.start()
    return mux, sink


async def mesh(*ids: str, **kw: Any) -> tuple[dict[str, PeerMux], dict[str, Sink]]:
    """Start muxes that all know each other and wait until every link is up."""
    muxes: dict[str, PeerMux] = {}
    sinks: dict[str, Sink] = {}
    for nid in ids:
        muxes[nid], sinks[nid] = await make_mux(nid, **kw)
    addrs = {nid: m.address for nid, m in muxes.items()}
    for m in muxes.values():
        m.set_peers(addrs)
    await wait_until(
        lambda: all(m.is_connected(p) for n, m in muxes.items() for p in ids if p != n),
        what="mesh connected",
    )
    return muxes, sinks


async def stop_all(*muxes: PeerMux) -> None:
    for m in muxes:
        await m.stop()


# ---------------------------------------------------------------- raw peer


class RawPeer:
    """The dialer's side of §8.7, written out by hand."""

    opened: list[RawPeer] = []  # closed by ``close_raw_peers`` before the loop ends

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: bytes
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.key = key
        self.seq = 0

    @classmethod
    async def connect(
        cls, addr: str, secret: bytes = SECRET, node_id: str | None = None, cluster: str = ""
    ) -> RawPeer:
        host, port = addr.rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        mine = os.urandom(16)
        writer.write(mine)
        theirs = await asyncio.wait_for(reader.readexactly(16), 3)
        key = hmac.new(secret, b"peer-v1" + mine + theirs, hashlib.sha256).digest()
        peer = cls(reader, writer, key)
        cls.opened.append(peer)
        if node_id is not None:
            await peer.send(
                peer.frame(MEMBERSHIP, 0, msgpack.packb({"node_id": node_id, "cluster": cluster}))
            )
        return peer

    def frame(
        self, channel: int, group: int, body: bytes, *, seq: int | None = None, version: int = 1
    ) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        head = struct.pack(">IBBHQ", 1 + 1 + 2 + 8 + len(body) + 16, version, channel, group, seq)
        mac = hmac.new(self.key, head + body, hashlib.sha256).digest()[:16]
        return head + body + mac

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def closed(self, timeout: float = 3.0) -> bool:
        """True once the mux has closed the connection (EOF or reset)."""
        try:
            async with asyncio.timeout(timeout):
                while await self.reader.read(4096):
                    pass
            return True
        except TimeoutError:  # before OSError: TimeoutError is one of its subclasses
            return False
        except OSError:
            return True

    def close(self) -> None:
        self.writer.close()


def close_raw_peers() -> None:
    while RawPeer.opened:
        RawPeer.opened.pop().close()


async def with_target(test: Callable[[PeerMux, Sink], Awaitable[None]], **kw: Any) -> None:
    """A mux that knows raw peer "n9" (whose own listener is dead)."""
    mux, sink = await make_mux("n1", {"n9": dead_address()}, **kw)
    try:
        await test(mux, sink)
    finally:
        close_raw_peers()
        await mux.stop()


# ---------------------------------------------------------------- tests


def test_secret_must_be_32_bytes() -> None:
    with pytest.raises(ValueError):
        PeerMux("n1", "127.0.0.1:0", {}, b"x" * 31, on_frame=lambda *a: None)
    PeerMux("n1", "127.0.0.1:0", {}, b"x" * 32, on_frame=lambda *a: None)


def test_three_nodes_deliver_in_order_per_pair() -> None:
    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2", "n3")
        try:
            channels = [RAFT, FORWARD, MIGRATE, EVENTS, MEMBERSHIP]
            expected: dict[tuple[str, str], list[tuple[int, int, bytes]]] = {}
            for i in range(300):
                for src, m in muxes.items():
                    for dst in muxes:
                        if dst == src:
                            continue
                        ch, grp = channels[i % 5], (i * 7) % 9
                        body = f"{src}>{dst}:{i}".encode() * (1 + i % 4)
                        assert m.send(dst, ch, grp, body)
                        expected.setdefault((src, dst), []).append((ch, grp, body))
            total = sum(len(v) for v in expected.values())
            await wait_until(
                lambda: sum(len(s.frames) for s in sinks.values()) == total, what="all frames"
            )
            for (src, dst), want in expected.items():
                got = [(c, g, b) for p, c, g, b in sinks[dst].frames if p == src]
                assert got == want
            # large bodies and the extreme group tag travel too
            big = os.urandom(1 << 20)
            assert muxes["n1"].send("n2", MIGRATE, 65535, big)
            await wait_until(lambda: sinks["n2"].frames[-1] == ("n1", MIGRATE, 65535, big))
            assert all(m.rejected == dict.fromkeys(m.rejected, 0) for m in muxes.values())
        finally:
            await stop_all(*muxes.values())

    run(main())


def test_peer_up_down_callbacks_and_unreachable_send() -> None:
    async def main() -> None:
        events: list[tuple[str, str]] = []
        a = PeerMux(
            "a",
            "127.0.0.1:0",
            {},
            SECRET,
            on_frame=lambda *x: None,
            on_peer_up=lambda p: events.append(("up", p)),
            on_peer_down=lambda p: events.append(("down", p)),
        )
        await a.start()
        b, _ = await make_mux("b", {"a": a.address})
        try:
            assert not a.send("b", RAFT, 1, b"x")  # unknown peer: not queued
            a.set_peers({"b": b.address, "a": a.address})  # its own id is ignored
            await wait_until(lambda: a.is_connected("b"))
            assert events == [("up", "b")]
            await b.stop()
            await wait_until(lambda: not a.is_connected("b"))
            await wait_until(lambda: ("down", "b") in events)
            assert not a.send("b", RAFT, 1, b"x")  # disconnected: dropped, False
        finally:
            await stop_all(a, b)

    run(main())


def test_wrong_secret_mux_cannot_join_or_inject() -> None:
    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2")
        bad, bad_sink = await make_mux("n3", secret=WRONG)
        try:
            addrs = {n: m.address for n, m in muxes.items()} | {"n3": bad.address}
            for m in (*muxes.values(), bad):
                m.set_peers(addrs)
            # TCP connects, so each dialer is briefly "up", but every hello
            # fails its MAC on the other side and the connection is closed.
            await wait_until(
                lambda: muxes["n1"].rejected["bad_mac"] >= 1 and bad.rejected["bad_mac"] >= 1
            )
            for _ in range(30):  # keep trying while the dialers flap
                bad.send("n1", RAFT, 0, b"inject")
                muxes["n1"].send("n3", RAFT, 0, b"leak")
                await asyncio.sleep(0.01)
            assert muxes["n2"].send("n1", RAFT, 0, b"legit")
            await wait_until(lambda: sinks["n1"].bodies("n2") == [b"legit"])
            await asyncio.sleep(0.1)
            assert sinks["n1"].bodies("n3") == []
            assert bad_sink.frames == []
        finally:
            await stop_all(bad, *muxes.values())

    run(main())


def test_raw_peer_with_wrong_key_is_closed_as_bad_mac() -> None:
    async def test(mux: PeerMux, sink: Sink) -> None:
        raw = await RawPeer.connect(mux.address, secret=WRONG, node_id="n9")
        await raw.send(raw.frame(RAFT, 1, b"inject"))
        assert await raw.closed()
        assert mux.rejected["bad_mac"] == 1
        assert sink.frames == []

    run(with_target(test))


def test_replayed_frame_closes_connection() -> None:
    async def test(mux: PeerMux, sink: Sink) -> None:
        raw = await RawPeer.connect(mux.address, node_id="n9")
        f = raw.frame(RAFT, 3, b"once")
        await raw.send(f)
        await wait_until(lambda: sink.frames == [("n9", RAFT, 3, b"once")])
        await raw.send(f)
        assert await raw.closed()
        assert mux.rejected["replay"] == 1
        assert sink.frames == [("n9", RAFT, 3, b"once")]

        # A frame captured on one connection is worthless on another (new key).
        raw2 = await RawPeer.connect(mux.address, node_id="n9")
        await raw2.send(f)
        assert await raw2.closed()
        assert mux.rejected["bad_mac"] == 1
        assert len(sink.frames) == 1

    run(with_target(test))


@pytest.mark.parametrize("seq", [3, 1, 0, 2**64 - 1])
def test_out_of_order_sequence_closes_connection(seq: int) -> None:
    async def test(mux: PeerMux, sink: Sink) -> None:
        raw = await RawPeer.connect(mux.address, node_id="n9")  # hello was seq 1
        await raw.send(raw.frame(RAFT, 0, b"skip", seq=seq))
        assert await raw.closed()
        assert mux.rejected["replay"] == 1
        assert sink.frames == []

    run(with_target(test))


def test_out_of_order_hello_sequence() -> None:
    async def test(mux: PeerMux, sink: Sink) -> None:
        raw = await RawPeer.connect(mux.address)
        await raw.send(
            raw.frame(MEMBERSHIP, 0, msgpack.packb({"node_id": "n9", "cluster": ""}), seq=2)
        )
        assert await raw.closed()
        assert mux.rejected["replay"] == 1

    run(with_target(test))


def test_oversized_frames_close_connection_without_reading_them() -> None:
    async def test(mux: PeerMux, sink: Sink) -> None:
        raw = await RawPeer.connect(mux.address, node_id="n9")
        await raw.send(struct.pack(">I", mux.max_frame + 1) + b"\x01" * 64)
        assert await raw.closed()
        assert mux.rejected["too_large"] == 1
        # an unauthenticated stranger may not even make us buffer a large hello
        raw = await RawPeer.connect(mux.address)
        await raw.send(struct.pack(">I", 1 << 20))
        assert await raw.closed()
        assert mux.rejected["too_large"] == 2
        # a legit peer's frame at exactly max_frame is fine
        raw = await RawPeer.connect(mux.address, node_id="n9")
        body = b"z" * (mux.max_frame - 28)
        await raw.send(raw.frame(RAFT, 1, body))
        await wait_until(lambda: len(sink.frames) == 1)
        assert sink.frames[0][3] == body
        # and the sender side refuses to produce what the receiver would reject
        assert mux.dropped == 0

    run(with_target(test, max_frame=1 << 16))


def test_send_refuses_bodies_over_max_frame() -> None:
    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2", max_frame=1024)
        try:
            assert not muxes["n1"].send("n2", RAFT, 0, b"x" * 1000)
            assert muxes["n1"].dropped == 1
            assert muxes["n1"].send("n2", RAFT, 0, b"x" * (1024 - 28))
            await wait_until(lambda: len(sinks["n2"].frames) == 1)
            with pytest.raises(ValueError):
                muxes["n1"].send("n2", 9, 0, b"")
            with pytest.raises(ValueError):
                muxes["n1"].send("n2", RAFT, 1 << 16, b"")
        finally:
            await stop_all(*muxes.values())

    run(main())


@pytest.mark.parametrize(
    "case, reason",
    [
        ("random_frame", "bad_mac"),
        ("short_length", "malformed"),
        ("bad_version", "malformed"),
        ("hello_wrong_channel", "malformed"),
        ("hello_wrong_group", "malformed"),
        ("hello_not_msgpack", "malformed"),
        ("hello_not_map", "malformed"),
        ("hello_no_node_id", "malformed"),
        ("unknown_channel", "malformed"),
        ("bad_mac_after_hello", "bad_mac"),
    ],
)
def test_garbage_closes_connection(case: str, reason: str) -> None:
    async def test(mux: PeerMux, sink: Sink) -> None:
        authed = case in ("unknown_channel", "bad_mac_after_hello")
        raw = await RawPeer.connect(mux.address, node_id="n9" if authed else None)
        # built lazily: every raw.frame() call takes the next sequence number
        data = {
            "random_frame": lambda: struct.pack(">I", 40) + os.urandom(40),
            "short_length": lambda: struct.pack(">I", 5) + os.urandom(5),
            "bad_version": lambda: raw.frame(
                MEMBERSHIP, 0, msgpack.packb({"node_id": "n9"}), version=2
            ),
            "hello_wrong_channel": lambda: raw.frame(RAFT, 0, msgpack.packb({"node_id": "n9"})),
            "hello_wrong_group": lambda: raw.frame(MEMBERSHIP, 7, msgpack.packb({"node_id": "n9"})),
            "hello_not_msgpack": lambda: raw.frame(MEMBERSHIP, 0, b"\xc1\xc1\xc1"),
            "hello_not_map": lambda: raw.frame(MEMBERSHIP, 0, msgpack.packb(["n9"])),
            "hello_no_node_id": lambda: raw.frame(MEMBERSHIP, 0, msgpack.packb({"cluster": ""})),
            "unknown_channel": lambda: raw.frame(200, 0, b"?"),
            "bad_mac_after_hello": lambda: raw.frame(RAFT, 0, b"body")[:-1] + b"\x00",
        }[case]()
        await raw.send(data)
        assert await raw.closed()
        assert mux.rejected[reason] == 1
        assert sum(mux.rejected.values()) == 1
        assert sink.frames == []

    run(with_target(test))


def test_unknown_node_id_is_refused_unless_accept_unknown() -> None:
    async def main() -> None:
        mux, sink = await make_mux("n1", {"n9": dead_address()}, cluster="c1")
        joiner, jsink = await make_mux("j1", accept_unknown=True)
        try:
            raw = await RawPeer.connect(mux.address, node_id="intruder")
            await raw.send(raw.frame(RAFT, 0, b"hi"))
            assert await raw.closed()
            assert mux.refused == 1 and sink.frames == []
            # a known id from another cluster is refused too
            raw = await RawPeer.connect(mux.address, node_id="n9", cluster="other")
            assert await raw.closed()
            assert mux.refused == 2
            assert sum(mux.rejected.values()) == 0  # authenticated, just not welcome
            # a node that accepts unknown peers (joining) takes frames from them
            raw = await RawPeer.connect(joiner.address, node_id="stranger")
            await raw.send(raw.frame(EVENTS, 2, b"hello"))
            await wait_until(lambda: jsink.frames == [("stranger", EVENTS, 2, b"hello")])
        finally:
            close_raw_peers()
            await stop_all(mux, joiner)

    run(main())


def test_handshake_timeout_and_stalled_peers_do_not_disturb_others(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hanzo_tasks.replication.raft import transport

    monkeypatch.setattr(transport, "HANDSHAKE_TIMEOUT", 0.3)

    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2", "n3")
        muxes["n1"].set_peers({n: m.address for n, m in muxes.items()} | {"n9": dead_address()})
        n1, sink = muxes["n1"], sinks["n1"]
        try:
            # silent stranger, a stranger stuck mid-hello, and a peer stuck mid-frame
            host, port = n1.address.rsplit(":", 1)
            silent_r, silent_w = await asyncio.open_connection(host, int(port))
            half = await RawPeer.connect(n1.address)
            await half.send(half.frame(MEMBERSHIP, 0, msgpack.packb({"node_id": "n9"}))[:10])
            stuck = await RawPeer.connect(n1.address, node_id="n9")
            await stuck.send(stuck.frame(RAFT, 0, b"x" * 1000)[:500])
            for i in range(50):
                assert muxes["n2"].send("n1", RAFT, i % 3, b"%d" % i)
                assert muxes["n3"].send("n1", FORWARD, 0, b"%d" % i)
            await wait_until(lambda: len(sink.frames) == 100)
            assert sink.bodies("n2") == [b"%d" % i for i in range(50)]
            # the unauthenticated ones are cut off by the handshake timeout
            assert await half.closed(2.0)
            assert await asyncio.wait_for(silent_r.read(), 2.0) == b""
            # one peer dying leaves the rest running
            await muxes["n3"].stop()
            await wait_until(lambda: not muxes["n2"].is_connected("n3"))
            assert muxes["n2"].send("n1", RAFT, 0, b"after")
            assert n1.send("n2", RAFT, 0, b"back")
            await wait_until(lambda: sink.bodies("n2")[-1:] == [b"after"])
            await wait_until(lambda: sinks["n2"].bodies("n1") == [b"back"])
            assert not await stuck.closed(0.1)  # authenticated and merely slow: kept
        finally:
            silent_w.close()
            close_raw_peers()
            await stop_all(*muxes.values())

    run(main())


def test_reconnect_after_peer_restart_on_same_port() -> None:
    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2")
        n1 = muxes["n1"]
        try:
            assert n1.send("n2", RAFT, 1, b"before")
            await wait_until(lambda: sinks["n2"].bodies("n1") == [b"before"])
            old = muxes.pop("n2")
            addr = old.address
            await old.stop()
            await old.stop()  # idempotent
            await wait_until(lambda: not n1.is_connected("n2"))
            assert not n1.send("n2", RAFT, 1, b"lost")
            await asyncio.sleep(0.3)  # let the dialer fail a few times
            new, new_sink = await make_mux("n2", {"n1": n1.address}, listen=addr)
            muxes["n2"] = new
            await wait_until(
                lambda: n1.is_connected("n2") and new.is_connected("n1"), what="reconnect"
            )
            assert n1.send("n2", RAFT, 1, b"after")
            assert new.send("n1", RAFT, 1, b"hello again")
            await wait_until(lambda: new_sink.bodies("n1") == [b"after"])
            await wait_until(lambda: sinks["n1"].bodies("n2")[-1:] == [b"hello again"])
        finally:
            await stop_all(*muxes.values())

    run(main())


def test_set_peers_adds_removes_and_readdresses() -> None:
    async def main() -> None:
        a, _ = await make_mux("a")
        b, bsink = await make_mux("b", {"a": dead_address()})
        c, _ = await make_mux("c")
        try:
            a.set_peers({"b": dead_address()})  # wrong address first
            await asyncio.sleep(0.1)
            assert not a.is_connected("b")
            b.set_peers({"a": a.address})
            await asyncio.to_thread(a.set_peers, {"b": b.address})  # from another thread
            await wait_until(lambda: a.is_connected("b"))
            assert a.send("b", RAFT, 0, b"1")
            await wait_until(lambda: bsink.bodies("a") == [b"1"])
            c.set_peers({"b": b.address})  # b does not know c: refused, c's link flaps
            await wait_until(lambda: b.refused >= 1)
            for _ in range(20):
                c.send("b", RAFT, 0, b"not a member")
                await asyncio.sleep(0.01)
            assert bsink.bodies("c") == []
            b.set_peers({})  # a removed: its inbound connection is closed too
            await wait_until(lambda: not b.is_connected("a"))
            await wait_until(lambda: "a" not in b._inbound)
        finally:
            await stop_all(a, b, c)

    run(main())


def test_send_from_another_thread_while_loop_runs() -> None:
    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2")
        try:

            def raft_thread(tid: int) -> int:
                ok = 0
                for i in range(2000):
                    ok += muxes["n1"].send("n2", RAFT, i % 16, bytes([tid]) + i.to_bytes(4, "big"))
                return ok

            results = await asyncio.gather(*(asyncio.to_thread(raft_thread, t) for t in range(2)))
            assert results == [2000, 2000]
            await wait_until(lambda: len(sinks["n2"].frames) == 4000)
            # two threads interleave, but each thread's frames arrive complete and in order
            for tid in range(2):
                got = [
                    int.from_bytes(f[3][1:], "big") for f in sinks["n2"].frames if f[3][0] == tid
                ]
                assert got == list(range(2000))
            assert muxes["n1"].rejected["replay"] == 0 and muxes["n2"].rejected == dict.fromkeys(
                muxes["n2"].rejected, 0
            )
        finally:
            await stop_all(*muxes.values())

    run(main())


def test_backpressure_drops_instead_of_growing() -> None:
    async def main() -> None:
        # A "peer" that completes the nonce exchange and then stops reading
        # until ``resume`` is set.
        resume = asyncio.Event()
        handlers: list[asyncio.StreamWriter] = []

        async def black_hole(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readexactly(16)
            writer.write(os.urandom(16))
            handlers.append(writer)
            await resume.wait()
            with contextlib.suppress(OSError):
                while await reader.read(1 << 20):
                    pass

        server = await asyncio.start_server(black_hole, "127.0.0.1", 0)
        # small receive window (inherited by accepted sockets) so kernel buffers fill fast
        server.sockets[0].setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        port = server.sockets[0].getsockname()[1]
        hw = 1 << 20
        a, _ = await make_mux("a", {"hole": f"127.0.0.1:{port}"}, high_water=hw)
        try:
            await wait_until(lambda: a.is_connected("hole"))
            body = b"b" * (64 << 10)
            refused = 0
            for _ in range(800):  # 50 MiB, far more than the kernel buffers hold
                refused += not a.send("hole", RAFT, 0, body)
                await asyncio.sleep(0)
            assert refused > 0 and a.dropped >= refused
            conn = a._out["hole"]
            assert conn.writer.transport.get_write_buffer_size() <= hw
            assert conn.queued <= hw
            assert a.is_connected("hole")  # congestion drops frames, not the link
            # once the peer reads again, sends are accepted again
            resume.set()
            await wait_until(lambda: a.send("hole", RAFT, 0, b"x"), what="congestion to clear")
        finally:
            await a.stop()
            for w in handlers:
                w.close()
            server.close()

    run(main())


def test_fuzz_listener_with_random_bytes() -> None:
    """Random bytes, on a fresh connection each, before the nonce, after it,
    and after a valid hello: the mux survives and legit traffic still flows."""

    async def main() -> None:
        muxes, sinks = await mesh("n1", "n2")
        n1 = muxes["n1"]
        n1.set_peers({"n2": muxes["n2"].address, "n9": dead_address()})
        host, port = n1.address.rsplit(":", 1)
        addr = (host, int(port))

        def handshake(sock: socket.socket) -> bytes:
            mine = os.urandom(16)
            sock.sendall(mine)
            theirs = b""
            while len(theirs) < 16:
                chunk = sock.recv(16 - len(theirs))
                assert chunk
                theirs += chunk
            return hmac.new(SECRET, b"peer-v1" + mine + theirs, hashlib.sha256).digest()

        def hello(key: bytes) -> bytes:
            body = msgpack.packb({"node_id": "n9", "cluster": ""})
            head = struct.pack(">IBBHQ", 28 + len(body), 1, MEMBERSHIP, 0, 1)
            return head + body + hmac.new(key, head + body, hashlib.sha256).digest()[:16]

        @settings(
            max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        @given(
            stage=st.sampled_from(["connect", "nonce", "hello"]),
            framed=st.booleans(),
            data=st.binary(max_size=256),
        )
        def throw(stage: str, framed: bool, data: bytes) -> None:
            if framed:  # a plausible length so the bytes reach the MAC check
                data = struct.pack(">I", len(data)) + data
            with socket.create_connection(addr, timeout=3) as sock:
                try:
                    if stage != "connect":
                        key = handshake(sock)
                        if stage == "hello":
                            sock.sendall(hello(key))
                    sock.sendall(data)
                    sock.shutdown(socket.SHUT_WR)
                    while sock.recv(4096):  # until the mux closes its side
                        pass
                except (ConnectionError, OSError):
                    pass

        await asyncio.to_thread(throw)
        assert all(p in ("n2", "n9") for p, *_ in sinks["n1"].frames)
        assert n1.send("n2", RAFT, 1, b"still here")
        assert muxes["n2"].send("n1", RAFT, 1, b"me too")
        await wait_until(lambda: sinks["n2"].bodies("n1") == [b"still here"])
        await wait_until(lambda: sinks["n1"].bodies("n2") == [b"me too"])
        await wait_until(
            lambda: len(n1._handlers) == 1 and n1._pending_handshakes == 0,
            what="fuzz handlers to finish",
        )
        assert sum(n1.rejected.values()) > 0
        await stop_all(*muxes.values())

    run(main(), timeout=25)
