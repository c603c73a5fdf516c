"""A fault-injecting TCP proxy for the nodes' peer links (no root needed).

Every node advertises a proxy address as its peer address (``--advertise-peer``
and the ``peers`` list); the meta group records those addresses, so every
node dials every other node *through* the proxy of the node it dials. The
proxy forwards to the node's real peer listener.

Which link a connection belongs to: the peer protocol (SPEC §8.7,
``replication/raft/transport.py``) is dial-to-send: node A sends to B only on
the connection A dialed to B's address. The dialer writes a 16-byte nonce,
waits for the acceptor's nonce, then sends a hello frame whose msgpack body
names it (``node_id``). Frames are authenticated, not encrypted, so the proxy
reads the dialer's id from that hello. A connection accepted by B's proxy and
naming A carries the link A -> B.

Faults are per directed link:

``hold``  (the default blackhole) stop forwarding, keep both sockets open.
          The proxy stops reading, so TCP back-pressure builds up and nothing
          is lost: after ``heal`` the held bytes arrive, late. To the nodes it
          looks like a partition in which TCP keeps retrying, with no RST or
          FIN that would tell them the peer is gone.
``drop``  read and discard while blocked (messages are lost). On heal such
          a connection is closed, since its byte stream has a hole; both ends
          redial, as after a TCP user timeout.

A link can also be *throttled* (``throttle``): it carries at most a given
number of bytes per second, and the proxy reads no faster, so the sender's
socket buffers fill and its writes back up (a slow or congested link: the
back-pressure a snapshot install must survive). Nothing is lost.

The hub runs on its own thread and event loop, so a busy workload (or a
checker crunching on the main thread) does not stall the cluster's Raft
traffic. Its control methods are thread-safe and take effect before they
return.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgpack

log = logging.getLogger("chaos.proxy")

NONCE_LEN = 16
HELLO_MAX = 4096
_LEN = struct.Struct(">I")
_HDR_LEN = 12  # u8 version, u8 channel, u16 group, u64 sequence
_MAC_LEN = 16
CHUNK = 65536
UNKNOWN = "?"

Link = tuple[str, str]


def parse_hello(buf: bytes | bytearray) -> str | None:
    """The dialer's node id from the start of a peer connection.

    ``buf`` holds the dialer's first bytes: nonce, then the hello frame.
    Returns None while more bytes are needed, ``UNKNOWN`` when the bytes are
    not a hello we understand (such a connection is never blocked: it is not
    one of ours).
    """
    head = NONCE_LEN + _LEN.size
    if len(buf) < head:
        return None
    (length,) = _LEN.unpack_from(buf, NONCE_LEN)
    if length > HELLO_MAX or length < _HDR_LEN + _MAC_LEN:
        return UNKNOWN
    if len(buf) < head + length:
        return None
    body = bytes(buf[head + _HDR_LEN : head + length - _MAC_LEN])
    try:
        hello = msgpack.unpackb(body, raw=False)
    except Exception:
        return UNKNOWN
    node = hello.get("node_id") if isinstance(hello, dict) else None
    return node if isinstance(node, str) and node else UNKNOWN


@dataclass(eq=False)
class _Conn:
    """One proxied connection: the dialer (client side) and the target (upstream)."""

    dst: str
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    src: str | None = None
    tainted: bool = False  # bytes were dropped: the stream has a hole
    closed: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def close(self) -> None:
        self.closed = True
        for w in (self.client, self.upstream):
            if w is not None:
                with contextlib.suppress(Exception):
                    w.close()


@dataclass
class Bucket:
    """A token bucket: ``rate`` bytes per second, bursts of up to ``burst`` bytes.

    ``take`` says how long to wait before ``n`` more bytes may pass (the bytes
    are counted at once, so a caller that waits that long keeps the rate).
    """

    rate: float
    burst: float
    tokens: float = 0.0
    t: float | None = None

    def take(self, now: float, n: int) -> float:
        if self.t is None:
            self.t, self.tokens = now, self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
        self.t = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class LinkStats:
    """Bytes per directed link, for the report."""

    forwarded: int = 0
    dropped: int = 0
    connections: int = 0


class ProxyHub:
    """All peer proxies of one cluster, on a private event loop thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="chaos-proxy", daemon=True)
        self._servers: dict[str, asyncio.Server] = {}
        self._targets: dict[str, tuple[int, int]] = {}
        self._blocked: dict[Link, str] = {}
        self._slow: dict[Link, Bucket] = {}
        self._conns: set[_Conn] = set()
        self._cond: asyncio.Condition | None = None
        self.stats: dict[Link, LinkStats] = {}
        self._started = False

    # ------------------------------------------------------------ lifecycle

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def start(self) -> ProxyHub:
        if not self._started:
            self._started = True
            self._thread.start()
            self._call(self._init())
        return self

    async def _init(self) -> None:
        self._cond = asyncio.Condition()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout)

    def stop(self) -> None:
        """Close every listener and connection and end the thread. Idempotent."""
        if not self._started or not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._call(self._close_all(), timeout=10.0)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _close_all(self) -> None:
        for srv in self._servers.values():
            srv.close()
        for c in list(self._conns):
            c.close()
        tasks = [t for c in list(self._conns) for t in c.tasks]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._conns.clear()

    # ------------------------------------------------------------ targets

    def add_target(self, node_id: str, listen_port: int, upstream_port: int) -> None:
        """Listen on ``listen_port`` and forward to ``upstream_port`` (node ``node_id``)."""
        self._call(self._add_target(node_id, listen_port, upstream_port))

    async def _add_target(self, node_id: str, listen_port: int, upstream_port: int) -> None:
        async def accept(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self._serve(node_id, r, w)

        self._targets[node_id] = (listen_port, upstream_port)
        self._servers[node_id] = await asyncio.start_server(
            accept, self.host, listen_port, reuse_address=True
        )

    # ------------------------------------------------------------ faults

    def block(self, links: Iterable[Link], mode: str = "hold") -> None:
        """Blackhole these directed links (``hold`` or ``drop``, see the module doc)."""
        if mode not in ("hold", "drop"):
            raise ValueError(f"mode must be hold or drop, not {mode!r}")
        self._call(self._set(list(links), mode))

    def heal(self, links: Iterable[Link] | None = None) -> None:
        """Unblock and unthrottle these links (all when None); drop-mode connections are closed."""
        self._call(self._unset(None if links is None else list(links)))

    def throttle(self, links: Iterable[Link], rate: float, burst: float | None = None) -> None:
        """Let these directed links carry at most ``rate`` bytes/s (until ``heal``)."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._call(self._throttle(list(links), float(rate), float(burst if burst is not None else CHUNK)))

    def throttled(self) -> dict[Link, float]:
        return {link: b.rate for link, b in self._slow.items()}

    def isolate(self, victim: str, nodes: Iterable[str], mode: str = "hold") -> list[Link]:
        """Cut ``victim`` from every other node in both directions; returns the links."""
        links = [(a, b) for n in nodes if n != victim for a, b in ((victim, n), (n, victim))]
        self.block(links, mode)
        return links

    def blocked(self) -> dict[Link, str]:
        return dict(self._blocked)

    def connections(self) -> list[tuple[str | None, str, bool]]:
        """(src, dst, tainted) of every open proxied connection (for tests and debugging)."""
        return [(c.src, c.dst, c.tainted) for c in list(self._conns) if not c.closed]

    async def _set(self, links: list[Link], mode: str) -> None:
        assert self._cond is not None
        async with self._cond:
            for link in links:
                self._blocked[link] = mode
            self._cond.notify_all()

    async def _throttle(self, links: list[Link], rate: float, burst: float) -> None:
        for link in links:
            self._slow[link] = Bucket(rate, max(burst, 1.0))

    async def _unset(self, links: list[Link] | None) -> None:
        assert self._cond is not None
        async with self._cond:
            if links is None:
                self._blocked.clear()
                self._slow.clear()
            else:
                for link in links:
                    self._blocked.pop(link, None)
                    self._slow.pop(link, None)
            self._cond.notify_all()
        for c in list(self._conns):
            if c.tainted and c.src is not None and (c.src, c.dst) not in self._blocked:
                c.close()

    # ------------------------------------------------------------ forwarding

    def _stat(self, link: Link) -> LinkStats:
        st = self.stats.get(link)
        if st is None:
            st = self.stats[link] = LinkStats()
        return st

    async def _serve(self, dst: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(dst=dst, client=writer)
        self._conns.add(conn)
        try:
            _, upstream_port = self._targets[dst]
            try:
                up_r, up_w = await asyncio.wait_for(
                    asyncio.open_connection(self.host, upstream_port), 3.0
                )
            except (OSError, TimeoutError):
                return  # target down: the dialer sees the close at once, as with a RST
            conn.upstream = up_w
            down = asyncio.current_task()
            up = asyncio.create_task(self._pump(conn, up_r, writer, forward=False))
            conn.tasks = [t for t in (down, up) if t is not None]
            await self._pump(conn, reader, up_w, forward=True)
            await asyncio.gather(up, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            conn.close()
            self._conns.discard(conn)

    def _link(self, conn: _Conn, forward: bool) -> Link | None:
        if conn.src is None or conn.src == UNKNOWN:
            return None
        return (conn.src, conn.dst) if forward else (conn.dst, conn.src)

    async def _gate(self, conn: _Conn, link: Link | None, size: int) -> bool:
        """Wait until ``link`` may carry ``size`` bytes; False = drop them."""
        if link is None:
            return True
        assert self._cond is not None
        if link in self._blocked:
            async with self._cond:
                while link in self._blocked and not conn.closed:
                    if self._blocked[link] == "drop":
                        conn.tainted = True
                        self._stat(link).dropped += size
                        return False
                    await self._cond.wait()
        bucket = self._slow.get(link)
        if bucket is not None and size:
            # Bytes beyond a burst wait their turn: the proxy stops reading,
            # the sender's buffers fill (back-pressure, nothing lost).
            delay = bucket.take(self._loop.time(), size)
            if delay > 0:
                await asyncio.sleep(delay)
        if conn.tainted or conn.closed:
            conn.close()
            return False
        self._stat(link).forwarded += size
        return True

    async def _pump(
        self, conn: _Conn, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, forward: bool
    ) -> None:
        """Copy one direction. ``forward`` = dialer to target (where the hello is)."""
        sniff = bytearray()
        held = bytearray()
        try:
            while not conn.closed:
                data = await reader.read(CHUNK)
                if not data:
                    break
                if forward and conn.src is None:
                    # The nonce goes through at once (the acceptor answers it
                    # before the dialer sends its hello); the hello is held
                    # until it names the dialer, then gated like the rest.
                    before = len(sniff)
                    sniff += data
                    if before < NONCE_LEN:
                        now = data[: NONCE_LEN - before]
                        writer.write(now)
                        data = data[len(now) :]
                    held += data
                    src = parse_hello(sniff)
                    if src is None:
                        continue
                    conn.src = src
                    if src != UNKNOWN:
                        self._stat((src, conn.dst)).connections += 1
                    data, held = bytes(held), bytearray()
                    if not data:
                        continue
                if await self._gate(conn, self._link(conn, forward), len(data)):
                    writer.write(data)
                    await writer.drain()
        except (OSError, ConnectionError, asyncio.IncompleteReadError):
            pass
        # EOF travels like data: not across a held link until it heals.
        with contextlib.suppress(Exception):
            await self._gate(conn, self._link(conn, forward), 0)
        conn.close()
