"""The node's single peer port (SPEC §8.7): every Raft group, forwarded
requests, migration streams and relayed events share one authenticated TCP
listener per node.

Wire format, one frame::

    u32 BE length | u8 version (=1) | u8 channel | u16 BE group | u64 BE sequence
    | body | 16-byte MAC

``length`` counts every byte after the length field (12 + len(body) + 16). A
connection starts with a nonce exchange (the dialer's 16 random bytes first,
then the acceptor's). Session key = HMAC-SHA256(secret, b"peer-v1" +
nonce_dialer + nonce_acceptor); MAC = HMAC-SHA256(session key, length field
through body)[:16]. Fresh nonces on both sides make every session key unique,
so a frame recorded on one connection is worthless on any other, and the
per-direction sequence (1, 2, 3, ...) makes it worthless later on the same one.

Topology: each node dials every peer and uses that outbound connection only to
send; it receives only on inbound connections. Two connections per pair, one per
direction, so there is no tie-breaking and no race between simultaneous dials.
The dialer's first frame (channel MEMBERSHIP, group 0) names it; the acceptor
delivers nothing from a connection until that frame authenticates and names a
known peer.

Threading: everything runs on the node's asyncio loop except ``send``,
``set_peers`` and ``is_connected``, which any thread (typically the Raft
thread) may call. ``send`` only queues the body; framing (sequence + MAC)
happens on the loop thread so a connection's sequence and its MACs can never be
interleaved by two writers.

Nothing received is unpickled or evaluated: the hello frame is decoded with
msgpack into plain values, every other body is handed over as opaque bytes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import hmac
import logging
import os
import random
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
from hanzo_tasks.protocol import hostport
from hanzo_tasks.protocol.channels import CHANNELS, MEMBERSHIP

log = logging.getLogger("tasks.peer")

VERSION = 1
NONCE_LEN = 16
MAC_LEN = 16
KEY_LABEL = b"peer-v1"
MIN_SECRET = 32

_LEN = struct.Struct(">I")
_HDR = struct.Struct(">BBHQ")  # version, channel, group, sequence
#: Bytes of a frame after the length field that are not body.
OVERHEAD = _HDR.size + MAC_LEN  # 28

#: Rejection reasons, the label values of ``tasks_peer_frames_rejected_total``.
REASONS = ("bad_mac", "replay", "malformed", "too_large")

#: The hello is tiny; capping it keeps an unauthenticated stranger from making
#: us buffer ``max_frame`` bytes before we have checked a single MAC.
HELLO_MAX = 4096
#: An unauthenticated connection must finish the nonce exchange and its hello
#: within this time, so idle or trickling strangers do not pin handlers.
HANDSHAKE_TIMEOUT = 5.0
#: At most this many connections may be in the handshake at once (a flood of
#: strangers cannot starve the loop or memory). A new connection past the cap
#: takes the slot of the oldest one still in its handshake: a real peer
#: authenticates within a round trip, so silent strangers holding every slot
#: cannot keep it out (they would have to replace it within that round trip).
MAX_PENDING_HANDSHAKES = 128
#: The same, per remote address: one address cannot take every slot, so its
#: new connections replace only its own oldest ones.
MAX_PENDING_PER_ADDRESS = 8
#: ``limited`` keys, the peer's label values of ``tasks_connection_limits_total``.
LIMIT_REASONS = ("handshake_timeout", "handshake_evicted", "per_address_evicted")
#: Dial timeout, covering connect and the acceptor's nonce.
CONNECT_TIMEOUT = 3.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 1.0
JITTER = 0.2
#: Per-connection bound on bytes queued by ``send`` plus bytes in the socket's
#: write buffer. Beyond it new frames are dropped (Raft retransmits; a forward
#: times out) instead of growing memory without bound behind a slow peer.
HIGH_WATER = 64 << 20
#: TCP_USER_TIMEOUT / keepalive: a peer that vanished (power loss, partition)
#: is noticed in seconds rather than the kernel's default of minutes to hours,
#: so the dialer reconnects and Raft sees the peer as down.
USER_TIMEOUT_MS = 10_000
KEEPALIVE_IDLE, KEEPALIVE_INTVL, KEEPALIVE_CNT = 5, 2, 3
#: A repeated warning about the same stranger is logged at most this often.
WARN_EVERY = 60.0

OnFrame = Callable[[str, int, int, bytes], None]
OnPeer = Callable[[str], None]


class _Reject(Exception):
    """A frame that closes its connection; ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def split_hostport(addr: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` / ``":port"`` -> (host, port): the one
    grammar of :mod:`hanzo_tasks.protocol.hostport`, an empty host allowed (listen
    on every interface)."""
    return hostport.split_host_port(addr, empty_host=True)


join_hostport = hostport.join_host_port


def session_key(secret: bytes, nonce_dialer: bytes, nonce_acceptor: bytes) -> bytes:
    """Per-connection key; both nonces feed it so neither side can force reuse."""
    return hmac.new(secret, KEY_LABEL + nonce_dialer + nonce_acceptor, hashlib.sha256).digest()


def frame_mac(key: bytes, head: bytes, body: bytes | memoryview) -> bytes:
    """MAC over the length field, header and body (the body is not copied)."""
    m = hmac.new(key, head, hashlib.sha256)
    m.update(body)
    return m.digest()[:MAC_LEN]


def encode_head(channel: int, group: int, seq: int, body_len: int) -> bytes:
    """Length field + header of a frame carrying ``body_len`` bytes."""
    return _LEN.pack(OVERHEAD + body_len) + _HDR.pack(VERSION, channel, group, seq)


def encode_frame(key: bytes, channel: int, group: int, seq: int, body: bytes) -> bytes:
    """One complete frame (used for the hello; hot paths avoid the concatenation)."""
    head = encode_head(channel, group, seq, len(body))
    return head + body + frame_mac(key, head, body)


def _tune_socket(writer: asyncio.StreamWriter) -> None:
    """TCP_NODELAY (Raft messages are small and latency-bound) and fast
    dead-peer detection; every option is best effort."""
    sock: Any = writer.get_extra_info("socket")
    if sock is None:
        return
    opts: list[tuple[int, int, int]] = [
        (socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
    ]
    for name, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE),
        ("TCP_KEEPINTVL", KEEPALIVE_INTVL),
        ("TCP_KEEPCNT", KEEPALIVE_CNT),
        ("TCP_USER_TIMEOUT", USER_TIMEOUT_MS),
    ):
        opt = getattr(socket, name, None)
        if opt is not None:
            opts.append((socket.IPPROTO_TCP, opt, value))
    for level, opt, value in opts:
        with contextlib.suppress(OSError, AttributeError, TypeError):
            sock.setsockopt(level, opt, value)


async def read_frame(
    reader: asyncio.StreamReader, key: bytes, expected_seq: int, limit: int
) -> tuple[int, int, bytes]:
    """Read and verify one frame; return (channel, group, body) or raise _Reject.

    The length is checked before the body is read (an oversized claim costs us
    nothing), and the MAC before any header field is trusted, so a forged
    frame always counts as ``bad_mac`` whatever its header says.
    """
    head = await reader.readexactly(_LEN.size)
    (length,) = _LEN.unpack(head)
    if length > limit:
        raise _Reject("too_large", f"length {length} > {limit}")
    if length < OVERHEAD:
        raise _Reject("malformed", f"length {length} < {OVERHEAD}")
    rest = await reader.readexactly(length)
    view = memoryview(rest)
    if not hmac.compare_digest(frame_mac(key, head, view[:-MAC_LEN]), view[-MAC_LEN:]):
        raise _Reject("bad_mac")
    version, channel, group, seq = _HDR.unpack_from(rest, 0)
    if version != VERSION:
        raise _Reject("malformed", f"version {version}")
    if seq != expected_seq:
        raise _Reject("replay", f"sequence {seq}, expected {expected_seq}")
    if channel not in CHANNELS:
        raise _Reject("malformed", f"channel {channel}")
    return channel, group, bytes(view[_HDR.size : -MAC_LEN])


def _close(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()


class _Outbound:
    """One live outbound (send-only) connection.

    ``send`` appends to ``queue`` under ``lock`` from any thread and schedules
    one ``flush`` on the loop; ``flush`` assigns sequence numbers and MACs on
    the loop thread only, which is what keeps them consistent.

    ``congested`` is set by the loop thread while the socket's write buffer is
    above half the high-water mark (the transport has paused writing) and
    cleared when it drains; while set, ``send`` refuses at once, so the caller
    learns about back-pressure instead of feeding frames that would be dropped.
    """

    __slots__ = (
        "peer_id",
        "reader",
        "writer",
        "key",
        "seq",
        "lock",
        "queue",
        "queued",
        "scheduled",
        "closed",
        "congested",
        "drainer",
    )

    def __init__(
        self,
        peer_id: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        key: bytes,
        seq: int,
    ) -> None:
        self.peer_id = peer_id
        self.reader = reader
        self.writer = writer
        self.key = key
        self.seq = seq
        self.lock = threading.Lock()
        self.queue: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self.queued = 0  # body bytes in ``queue``
        self.scheduled = False
        self.closed = False
        self.congested = False
        self.drainer: asyncio.Task[None] | None = None


class PeerMux:
    """One node's peer port: a listener for inbound frames plus a dialer per peer.

    ``on_frame(peer_id, channel, group, body)`` is called on the loop thread
    for every authenticated frame, in the order the peer sent them; it must be
    quick (hand the frame to another thread, as the Raft receiver does).
    ``on_peer_up`` / ``on_peer_down`` report this node's *outbound* connection
    to a peer (whether ``send`` can currently reach it), also on the loop thread.

    Counters for metrics: ``rejected[reason]`` (frames that closed a
    connection, reasons as in ``REASONS``), ``dropped`` (frames discarded for
    back-pressure) and ``refused`` (authenticated connections refused because
    the hello named an unknown node or another cluster).

    ``max_frame`` bounds the length field (bytes after it, so a body may be
    ``max_frame - 28`` bytes); both ends must agree on it (``limits.max_frame``).
    ``cluster`` (optional) is sent in the hello; a peer naming a different
    non-empty cluster is refused. ``high_water`` bounds, per connection, both
    the bytes queued by ``send`` and the socket's write buffer. ``tls``
    (optional): the (listener, dialer) SSL contexts of mutual TLS under the
    HMAC framing (docs/tls.md); the dialer checks the peer's CA, not its host
    name (the hello names the peer).
    """

    def __init__(
        self,
        node_id: str,
        listen: str,
        peers: Mapping[str, str],
        secret: bytes,
        *,
        on_frame: OnFrame,
        on_peer_up: OnPeer | None = None,
        on_peer_down: OnPeer | None = None,
        max_frame: int = 16 << 20,
        accept_unknown: bool = False,
        cluster: str = "",
        high_water: int = HIGH_WATER,
        handshake_timeout: float | None = None,
        max_handshakes: int | None = None,
        max_handshakes_per_address: int | None = None,
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    ) -> None:
        if not isinstance(secret, bytes | bytearray) or len(secret) < MIN_SECRET:
            raise ValueError(f"cluster secret must be at least {MIN_SECRET} bytes")
        if not node_id:
            raise ValueError("node_id must not be empty")
        if max_frame < OVERHEAD + 1:
            raise ValueError(f"max_frame must be more than {OVERHEAD}")
        split_hostport(listen)  # fail at construction, not at start()
        self.node_id = node_id
        self.cluster = cluster
        self.max_frame = max_frame
        self.accept_unknown = accept_unknown
        self.high_water = high_water
        # None: the module's value, read at each accept
        self.handshake_timeout = handshake_timeout
        self.max_handshakes = max_handshakes
        self.max_handshakes_per_address = max_handshakes_per_address
        self._tls = tls
        self._listen = listen
        self._secret = bytes(secret)
        self._on_frame = on_frame
        self._on_peer_up = on_peer_up
        self._on_peer_down = on_peer_down
        self._peers: dict[str, str] = self._clean_peers(peers)

        self.rejected: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.dropped = 0
        self.refused = 0
        self.limited: dict[str, int] = dict.fromkeys(LIMIT_REASONS, 0)
        self._stats_lock = threading.Lock()

        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._address = ""
        self._started = False
        self._stopping = False
        # loop-thread state (``_out`` is also read, never written, by other threads)
        self._out: dict[str, _Outbound] = {}
        self._dialers: dict[str, tuple[str, asyncio.Task[None]]] = {}
        self._inbound: dict[str, asyncio.StreamWriter] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        # connections in their handshake, oldest first: writer -> remote host
        self._pending: dict[asyncio.StreamWriter, str] = {}
        self._warned: dict[str, float] = {}

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind the listener (port 0 allowed) and start one dialer per peer.

        The mux adopts the running loop; all its callbacks run there.
        """
        if self._started or self._stopping:
            raise RuntimeError("a PeerMux starts once (make a new one to restart)")
        self._started = True
        self._loop = asyncio.get_running_loop()
        host, port = split_hostport(self._listen)
        self._server = await asyncio.start_server(
            self._accept, host or None, port, reuse_address=True,
            ssl=self._tls[0] if self._tls else None,
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT if self._tls else None,
        )
        sockname = self._server.sockets[0].getsockname()
        self._address = join_hostport(sockname[0], sockname[1])
        self._reconcile()

    @property
    def _pending_handshakes(self) -> int:
        """Connections in their handshake now."""
        return len(self._pending)

    @property
    def address(self) -> str:
        """The ``host:port`` actually bound (the configured one before ``start``)."""
        return self._address or self._listen

    async def stop(self) -> None:
        """Close the listener, every connection and every dialer. Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        if not self._started:
            return
        if self._server is not None:
            self._server.close()
        dialers = [task for _, task in self._dialers.values()]
        self._dialers.clear()
        for task in dialers:
            task.cancel()
        for writer in list(self._inbound.values()):
            _close(writer)
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*dialers, *handlers, return_exceptions=True)
        for conn in list(self._out.values()):
            self._drop_outbound(conn)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # ------------------------------------------------------------ membership

    def _clean_peers(self, peers: Mapping[str, str]) -> dict[str, str]:
        clean: dict[str, str] = {}
        for pid, addr in peers.items():
            if pid == self.node_id:
                continue  # a node never dials itself
            split_hostport(addr)
            clean[str(pid)] = str(addr)
        return clean

    def set_peers(self, peers: Mapping[str, str]) -> None:
        """Replace the peer set (thread-safe): new peers get a dialer, removed
        ones lose theirs and their inbound connection, a changed address
        restarts the dialer."""
        self._peers = self._clean_peers(peers)  # one atomic swap; readers see old or new
        loop = self._loop
        if loop is None or self._stopping:
            return
        if self._on_loop():
            self._reconcile()
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(self._reconcile)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop
        except RuntimeError:
            return False

    def _reconcile(self) -> None:
        if self._stopping:
            return
        peers = self._peers
        for pid, (addr, task) in list(self._dialers.items()):
            if peers.get(pid) != addr:
                del self._dialers[pid]
                task.cancel()
                if pid not in peers and not self.accept_unknown:
                    writer = self._inbound.pop(pid, None)
                    if writer is not None:
                        _close(writer)
        assert self._loop is not None
        for pid, addr in peers.items():
            if pid not in self._dialers:
                task = self._loop.create_task(self._dial_loop(pid, addr), name=f"peer-dial-{pid}")
                self._dialers[pid] = (addr, task)

    # ------------------------------------------------------------ sending

    def is_connected(self, peer_id: str) -> bool:
        """True while the outbound connection to ``peer_id`` is up."""
        conn = self._out.get(peer_id)
        return conn is not None and not conn.closed

    def send(self, peer_id: str, channel: int, group: int, body: bytes) -> bool:
        """Queue one frame for ``peer_id``; thread-safe and never blocks.

        Returns False when the frame is not queued: no live connection to the
        peer, back-pressure, or a body that cannot fit in ``max_frame``. A True
        is no delivery promise (the connection may drop before the bytes
        leave), which is all Raft needs: it retransmits.
        """
        if channel not in CHANNELS or not 0 <= group <= 0xFFFF:
            raise ValueError(f"bad channel {channel} or group {group}")
        conn = self._out.get(peer_id)
        if conn is None or conn.closed:
            return False
        body = bytes(body)  # a caller's bytearray may change after we return
        n = len(body)
        if OVERHEAD + n > self.max_frame:
            log.error(
                "peer frame to %s (channel %d group %d) of %d bytes exceeds max_frame %d; dropped",
                peer_id,
                channel,
                group,
                n,
                self.max_frame,
            )
            self._count_drop()
            return False
        drop = schedule = False
        with conn.lock:
            if conn.closed:
                return False
            if conn.congested or conn.queued + n > self.high_water:
                drop = True
            else:
                conn.queue.append((channel, group, body))
                conn.queued += n
                schedule = not conn.scheduled
                conn.scheduled = True
        if drop:
            self._count_drop()
            return False
        if schedule:
            loop = self._loop
            try:
                assert loop is not None
                loop.call_soon_threadsafe(self._flush, conn)
            except RuntimeError:  # loop closed under us: the frame is lost, as on a disconnect
                return False
        return True

    def _count_drop(self, n: int = 1) -> None:
        with self._stats_lock:
            self.dropped += n

    def _flush(self, conn: _Outbound) -> None:
        """Frame and write everything queued for ``conn`` (loop thread only)."""
        with conn.lock:
            items, conn.queue = conn.queue, collections.deque()
            conn.queued = 0
            conn.scheduled = False
        if conn.closed or not items:
            return
        transport = conn.writer.transport
        if transport.is_closing():
            return  # lost like any frame sent while disconnected; the dialer notices EOF
        buffered = transport.get_write_buffer_size()
        chunks: list[bytes] = []
        dropped = 0
        for channel, group, body in items:
            size = _LEN.size + OVERHEAD + len(body)
            if buffered + size > self.high_water:
                dropped += 1  # skipping consumes no sequence number, so no gap
                continue
            conn.seq += 1
            head = encode_head(channel, group, conn.seq, len(body))
            chunks += (head, body, frame_mac(conn.key, head, body))
            buffered += size
        if dropped:
            self._count_drop(dropped)
        if chunks:
            try:
                conn.writer.writelines(chunks)
            except Exception as e:  # a broken transport: the dialer will see EOF and redial
                log.debug("peer write to %s failed: %s", conn.peer_id, e)
                self._drop_outbound(conn)
                return
        if not conn.congested and transport.get_write_buffer_size() > self.high_water // 2:
            conn.congested = True
            conn.drainer = asyncio.get_running_loop().create_task(self._drain(conn))

    async def _drain(self, conn: _Outbound) -> None:
        """Clear ``congested`` once the transport resumes writing (its buffer fell
        to a quarter of the high-water mark), or the connection ends."""
        try:
            await conn.writer.drain()
        except Exception:
            pass  # connection lost: the dialer handles it
        finally:
            conn.congested = False
            conn.drainer = None

    def _drop_outbound(self, conn: _Outbound) -> None:
        with conn.lock:
            conn.closed = True
            conn.queue.clear()
            conn.queued = 0
        if self._out.get(conn.peer_id) is conn:
            del self._out[conn.peer_id]
        if conn.drainer is not None:
            conn.drainer.cancel()
        _close(conn.writer)

    # ------------------------------------------------------------ dialing

    async def _dial_loop(self, peer_id: str, addr: str) -> None:
        """Keep one outbound connection to ``peer_id`` up until cancelled.

        Back-off doubles from 50 ms to 1 s with ±20 % jitter (so a restarted
        cluster does not redial in lockstep); it resets only after a connection
        that lived at least BACKOFF_MAX, so a peer that accepts then closes us at
        once (it does not know us yet) is not hammered.
        """
        delay = BACKOFF_MIN
        host, port = split_hostport(addr)
        while not self._stopping:
            began = time.monotonic()
            conn: _Outbound | None = None
            try:
                conn = await self._connect(peer_id, host, port)
            except asyncio.CancelledError:
                raise
            except (OSError, EOFError, TimeoutError) as e:
                log.debug("dial %s at %s failed: %s", peer_id, addr, e)
                if isinstance(e, ssl.SSLError):  # a certificate problem does not pass by itself
                    self._warn(f"tls:{peer_id}", "TLS to peer %s at %s failed: %s", peer_id, addr, e)
            if conn is not None:
                self._out[peer_id] = conn
                self._notify(self._on_peer_up, peer_id)
                try:
                    await self._watch(conn)
                finally:
                    self._drop_outbound(conn)
                    self._notify(self._on_peer_down, peer_id)
                if time.monotonic() - began >= BACKOFF_MAX:
                    delay = BACKOFF_MIN
            await asyncio.sleep(delay * random.uniform(1 - JITTER, 1 + JITTER))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _connect(self, peer_id: str, host: str, port: int) -> _Outbound:
        """Dial, exchange nonces and send the hello (sequence 1)."""
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=self._tls[1] if self._tls else None),
            CONNECT_TIMEOUT,
        )
        try:
            _tune_socket(writer)
            nonce = os.urandom(NONCE_LEN)
            writer.write(nonce)
            theirs = await asyncio.wait_for(reader.readexactly(NONCE_LEN), CONNECT_TIMEOUT)
            key = session_key(self._secret, nonce, theirs)
            hello = msgpack.packb({"node_id": self.node_id, "cluster": self.cluster})
            writer.write(encode_frame(key, MEMBERSHIP, 0, 1, hello))
        except BaseException:
            _close(writer)
            raise
        # The transport pauses (and drain() waits) above half our high-water
        # mark; flush() still takes frames up to the full mark, which absorbs
        # a burst already queued when congestion begins.
        writer.transport.set_write_buffer_limits(high=self.high_water // 2)
        return _Outbound(peer_id, reader, writer, key, seq=1)

    async def _watch(self, conn: _Outbound) -> None:
        """Wait for the outbound connection to end.

        The acceptor never sends after its nonce; anything it does send is
        read and discarded, so reading is only how EOF or a reset is noticed.
        """
        with contextlib.suppress(OSError, EOFError):
            while await conn.reader.read(65536):
                pass

    def _notify(self, cb: OnPeer | None, peer_id: str) -> None:
        if cb is None:
            return
        try:
            cb(peer_id)
        except Exception:
            log.exception("peer callback for %s failed", peer_id)

    # ------------------------------------------------------------ accepting

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Serve one inbound connection: handshake, then deliver its frames.

        Each connection has its own task and nothing here waits on any other
        connection, so a slow or hostile peer stalls only itself.
        """
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        peer_id: str | None = None
        try:
            if self._stopping:
                return
            _tune_socket(writer)
            self._make_room(writer)
            timeout = self.handshake_timeout
            try:
                async with asyncio.timeout(HANDSHAKE_TIMEOUT if timeout is None else timeout):
                    theirs = await reader.readexactly(NONCE_LEN)
                    nonce = os.urandom(NONCE_LEN)
                    writer.write(nonce)
                    key = session_key(self._secret, theirs, nonce)
                    channel, group, body = await read_frame(
                        reader, key, 1, min(HELLO_MAX, self.max_frame)
                    )
            except TimeoutError:
                self._count_limit("handshake_timeout")
                raise
            finally:
                self._pending.pop(writer, None)
            peer_id = self._check_hello(channel, group, body, writer)
            if peer_id is None:
                return
            old = self._inbound.get(peer_id)
            if old is not None:
                # The peer redialled, so its old connection is dead or dying;
                # keeping one inbound per peer keeps its frames in one order.
                _close(old)
            self._inbound[peer_id] = writer
            seq = 2
            while True:
                channel, group, body = await read_frame(reader, key, seq, self.max_frame)
                seq += 1
                if self._inbound.get(peer_id) is not writer:
                    # Superseded by a newer connection from the same peer: frames
                    # still buffered here are older than the new connection's and
                    # must not be delivered after them (Raft assumes no reordering).
                    return
                try:
                    self._on_frame(peer_id, channel, group, body)
                except Exception:
                    log.exception(
                        "on_frame failed for a frame from %s (channel %d group %d)",
                        peer_id,
                        channel,
                        group,
                    )
        except _Reject as r:
            with self._stats_lock:
                self.rejected[r.reason] = self.rejected.get(r.reason, 0) + 1
            self._warn(
                f"reject:{self._remote(writer).rpartition(':')[0]}:{r.reason}",
                "peer connection from %s (%s) closed: %s",
                self._remote(writer),
                peer_id or "unauthenticated",
                r,
            )
        except (OSError, EOFError, TimeoutError):
            pass  # closed, reset or too slow: nothing to count, nothing delivered
        except asyncio.CancelledError:
            # stop() or loop shutdown. This task is the top of its stack, so
            # ending normally is safe, and it spares Python 3.11's
            # start_server done-callback from logging the cancellation.
            pass
        finally:
            if peer_id is not None and self._inbound.get(peer_id) is writer:
                del self._inbound[peer_id]
            _close(writer)
            if task is not None:
                self._handlers.discard(task)

    def _make_room(self, writer: asyncio.StreamWriter) -> None:
        """Enter ``writer`` in the handshake table, first dropping the oldest
        handshake of its address, or the oldest of all, when a cap is reached."""
        host = self._remote(writer).rpartition(":")[0]
        per_cap = self.max_handshakes_per_address or MAX_PENDING_PER_ADDRESS
        cap = self.max_handshakes or MAX_PENDING_HANDSHAKES
        same = [w for w, h in self._pending.items() if h == host]
        if len(same) >= per_cap:
            self._evict(same[0], "per_address_evicted")
        elif len(self._pending) >= cap:
            self._evict(next(iter(self._pending)), "handshake_evicted")
        self._pending[writer] = host

    def _evict(self, writer: asyncio.StreamWriter, reason: str) -> None:
        """Drop a connection still in its handshake: its handler sees EOF and ends."""
        self._pending.pop(writer, None)
        self._count_limit(reason)
        self._warn(f"limit:{reason}", "peer port: a connection from %s still in its handshake was "
                   "dropped for a newer one (%s)", self._remote(writer), reason)
        with contextlib.suppress(Exception):
            writer.transport.abort()

    def _count_limit(self, reason: str) -> None:
        with self._stats_lock:
            self.limited[reason] = self.limited.get(reason, 0) + 1

    def _check_hello(
        self, channel: int, group: int, body: bytes, writer: asyncio.StreamWriter
    ) -> str | None:
        """Validate the authenticated hello; return the peer id or None (refused)."""
        if channel != MEMBERSHIP or group != 0:
            raise _Reject("malformed", f"first frame on channel {channel} group {group}")
        try:
            hello = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as e:
            raise _Reject("malformed", f"hello not msgpack: {e}") from None
        if not isinstance(hello, dict):
            raise _Reject("malformed", "hello not a map")
        node_id = hello.get("node_id")
        cluster = hello.get("cluster", "")
        if not isinstance(node_id, str) or not node_id or not isinstance(cluster, str):
            raise _Reject("malformed", "hello without node_id/cluster")
        if self.cluster and cluster and cluster != self.cluster:
            self._refuse(node_id, f"cluster {cluster!r} is not {self.cluster!r}", writer)
            return None
        if node_id not in self._peers and not self.accept_unknown:
            self._refuse(node_id, "not a known peer", writer)
            return None
        return node_id

    def _refuse(self, node_id: str, why: str, writer: asyncio.StreamWriter) -> None:
        with self._stats_lock:
            self.refused += 1
        self._warn(
            f"refuse:{node_id}",
            "peer connection from %s refused: node %r %s",
            self._remote(writer),
            node_id,
            why,
        )

    @staticmethod
    def _remote(writer: asyncio.StreamWriter) -> str:
        peer = writer.get_extra_info("peername")
        return join_hostport(str(peer[0]), int(peer[1])) if peer else "?"

    def _warn(self, key: str, msg: str, *args: Any) -> None:
        """Log a warning, but the same one at most once per WARN_EVERY: a
        stranger redialling every second must not flood the log."""
        now = time.monotonic()
        if now - self._warned.get(key, -WARN_EVERY) < WARN_EVERY:
            return
        if len(self._warned) > 1024:
            self._warned.clear()
        self._warned[key] = now
        log.warning(msg, *args)
