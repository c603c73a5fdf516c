"""The ZAP listener of a node (SPEC §8): binary requests onto the service layer.

One asyncio TCP server on the node's loop. Each connection has one reader
task that parses frames and enforces §8.1, and one task per request, so the
requests of a connection run concurrently and may be answered out of order.
Responses are written under a per-connection lock (a frame is never
interleaved with another) with a write deadline, so a client that stops
reading stalls only its own connection; a malformed frame closes only its own
connection; every request gets exactly one response.

What a client may hold before and between requests is bounded (``listeners.*``):
a connection must complete HELLO within ``zap_hello_timeout``, and until it has,
no frame over ``zap_max_unauthenticated_frame`` is buffered (the length prefix
is checked first); once a frame's first byte is in, the whole frame must arrive
within ``zap_frame_timeout``; an authenticated connection that sends nothing,
has nothing in flight and holds no subscription (a worker waiting for pushes is
not idle) is closed after ``zap_idle_timeout``; and connections are capped in
total and per remote address at accept. Each closing is counted in
``tasks_connection_limits_total{listener="zap"}``.

This module owns the connections, their sessions (HELLO) and the dispatch of
each request through ``routes.ROUTES``. The op handlers (``ops_*`` modules) only
translate: snake_case ZAP fields and ``*_ms`` integers into the camelCase
HTTP-shaped bodies that ``cluster.service.core.Service`` validates, and its
records back into the snake_case wrappers of §8.4 (records inside keep their
camelCase form, §0). The rules live in the service, once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
import time
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Any

from hanzo_tasks.cluster.api.client_errors import client_error
from hanzo_tasks.cluster.api.fd_budget import connection_caps
from hanzo_tasks.cluster.api.zap.call import Call
from hanzo_tasks.cluster.api.zap.fields import Json, text
from hanzo_tasks.cluster.api.zap.routes import ROUTES, Route
from hanzo_tasks.cluster.auth import DEV_CALLER, Caller, role_allows
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.replication import NotReplica

log = logging.getLogger("hanzo_tasks.zap")

WRITE_TIMEOUT = 30.0
"""A response not taken by the client within this time closes its connection."""
EOF_DRAIN_TIMEOUT = 60.0
"""After the client half-closes, in-flight requests get this long to be answered."""
LINGER_TIMEOUT = 2.0
"""Before closing after a final error response, input is discarded this long, so
that the kernel does not reset the connection (and drop that response) because
unread bytes were pending."""
STREAM_LIMIT = 16 * 1024
"""Read-ahead of a connection's stream: reading pauses once twice this is buffered
and unread, so a connection holds little more than the frame being read."""
WARN_EVERY = 60.0
"""A repeated warning about refused connections is logged at most this often."""
_LEN = struct.Struct(">I")
_SUBSCRIBE_OPS = frozenset({Z.Op.SubscribeWorkflowTasks, Z.Op.SubscribeActivityTasks})


class _Deadline(Exception):
    """A listener deadline closed the connection; ``reason`` labels the metric."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Session:
    """What HELLO established on a connection."""

    hello: bool = False
    client_id: str = ""
    caller: Caller = DEV_CALLER
    """Who HELLO's token proved the caller to be (the dev caller while auth is off)."""
    namespace: str | None = None
    sdk: tuple[str, str] = ("", "")

    @property
    def org(self) -> str:
        """The caller's org as the API shows it: "" (the dev org) while auth is off."""
        return self.caller.org


def _label(opcode: int) -> str:
    """The metrics label of an opcode: its name, never an unbounded number."""
    return Z.OPCODES.get(opcode, "unknown")


@dataclass(eq=False)
class _Connection:
    """One client connection: a reader loop plus one task per request.

    ``closed`` stops all writing at once (in-flight requests then finish and
    drop their answers), so nothing is ever written after the FIN of a
    closing connection or into a transport that was aborted.
    """

    server: ZapServer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    session: Session = field(default_factory=Session)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    closed: bool = False
    """No more writes: set once the connection is closing or closed."""
    _shut: bool = False
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _pushes: dict[int, asyncio.Future[int]] = field(default_factory=dict)
    _push_id: int = 0
    opened: float = field(default_factory=time.monotonic)
    """When the connection was accepted: the HELLO deadline counts from here."""
    subscribed: bool = False
    """A subscription was made here: the connection waits for pushes, it is never idle."""

    async def push(self, opcode: int, body: Json, timeout: float) -> int:
        """Send a push (kind 3) and wait for its push-ack status; 0 when none came in time."""
        if self.closed:
            return 0
        self._push_id = self._push_id % 0xFFFFFFFF + 1
        pid = self._push_id
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pushes[pid] = fut
        try:
            await self._write(Z.encode_frame(Z.PUSH, opcode, pid, body))
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, ConnectionError, OSError):
            return 0
        finally:
            self._pushes.pop(pid, None)

    def _on_push_ack(self, frame: Z.Frame) -> None:
        fut = self._pushes.get(frame.frame_id)
        if fut is None or fut.done():
            return  # an ack for a push we no longer wait for
        try:
            body = Z.decode_body(frame.body)
            status = body.get("status")
        except Z.BadBody:
            status = 400
        fut.set_result(status if isinstance(status, int) else 400)

    @property
    def node(self) -> Any:
        return self.server.node

    @property
    def peer(self) -> str:
        """The client's address, for log lines."""
        addr = self.writer.get_extra_info("peername")
        return f"{addr[0]}:{addr[1]}" if isinstance(addr, tuple) and len(addr) >= 2 else "?"

    async def run(self) -> None:
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("zap connection failed")
        finally:
            self.close()

    async def _read_loop(self) -> None:
        metrics = self.node.metrics
        while not self.closed:
            try:
                frame = await self._next_frame()
            except _Deadline as e:
                metrics.connection_limited("zap", e.reason)
                log.debug("zap: closing connection from %s: %s", self.server.address_of(self.writer), e.reason)
                return
            except Z.FrameTooLarge as e:
                metrics.zap_frames_rejected.labels("too_large").inc()
                msg = str(e)
                if not self.session.hello and e.length <= self.server.max_frame:
                    metrics.connection_limited("zap", "unauthenticated_too_large")
                    msg = (f"frame of {e.length} bytes is over {e.max_frame}, the limit before HELLO "
                           "(listeners.zap_max_unauthenticated_frame)")
                await self._respond(e.opcode, e.frame_id, Z.error_body("too_large", msg), time.perf_counter())
                await self._linger_close()
                return
            except Z.BadVersion as e:
                metrics.zap_frames_rejected.labels("bad_version").inc()
                if e.frame_id:
                    resp = Z.error_body("invalid_argument", "unsupported version")
                    await self._respond(e.opcode, e.frame_id, resp, time.perf_counter())
                    await self._linger_close()
                return
            except Z.ProtocolError as e:
                metrics.zap_frames_rejected.labels("protocol").inc()
                log.debug("zap: closing connection: %s", e)
                if self.tasks:  # complete requests before the bad bytes still get their answers
                    await asyncio.wait(set(self.tasks), timeout=EOF_DRAIN_TIMEOUT)
                return
            except (ConnectionError, OSError):
                return
            if frame is None:  # the client is done sending: answer what is in flight
                if self.tasks:
                    await asyncio.wait(set(self.tasks), timeout=EOF_DRAIN_TIMEOUT)
                return
            if frame.kind == Z.PUSH_ACK:
                self._on_push_ack(frame)
                continue
            await self._on_request(frame)

    # ---- reading frames under the listener's deadlines ---------------------

    def _hello_left(self) -> float:
        return self.opened + self.server.hello_timeout - time.monotonic()

    def _busy(self) -> bool:
        """Something is held open for the client: a request being served (a long
        wait included), a push awaiting its ack, or a subscription (a worker
        waiting for tasks). Such a connection is not idle, however quiet."""
        return bool(self.tasks) or bool(self._pushes) or self.subscribed

    async def _first_byte(self) -> bytes:
        """The first byte of the next frame (b"" at end of stream), waited for no
        longer than the HELLO deadline, or the idle timeout once authenticated."""
        idle = self.server.idle_timeout
        while True:
            if self.session.hello:
                wait = idle or None
            else:
                wait = self._hello_left()
                if wait <= 0:
                    raise _Deadline("hello_timeout")
            try:
                async with asyncio.timeout(wait):
                    return await self.reader.read(1)
            except TimeoutError:
                if not self.session.hello:
                    raise _Deadline("hello_timeout") from None
                if not self._busy():
                    raise _Deadline("idle_timeout") from None

    async def _next_frame(self) -> Z.Frame | None:
        """The next frame, or None on a clean end of stream between frames.

        The checks of ``protocol.zap.read_frame``, with this listener's limits:
        before HELLO the length may not exceed ``max_unauth_frame`` (so no more
        is ever buffered for a stranger), and once the first byte is in, the
        whole frame must arrive within ``frame_timeout`` (before HELLO, and
        within the HELLO deadline)."""
        srv = self.server
        first = await self._first_byte()
        if not first:
            return None
        authed = self.session.hello
        limit = srv.max_frame if authed else srv.max_unauth_frame
        budget = srv.frame_timeout if authed else min(srv.frame_timeout, max(0.0, self._hello_left()))
        try:
            async with asyncio.timeout(budget):
                return await self._rest_of_frame(first, limit)
        except TimeoutError:
            if not authed and self._hello_left() <= 0:
                raise _Deadline("hello_timeout") from None
            raise _Deadline("frame_timeout") from None

    async def _rest_of_frame(self, first: bytes, limit: int) -> Z.Frame:
        reader = self.reader
        try:
            head = first + await reader.readexactly(_LEN.size - 1)
            (length,) = _LEN.unpack(head)
            if length < Z.MIN_LENGTH:
                raise Z.ProtocolError(f"length {length} is under {Z.MIN_LENGTH}")
            head += await reader.readexactly(Z.HEADER_SIZE - _LEN.size)
        except asyncio.IncompleteReadError:
            raise Z.ProtocolError("end of stream inside a frame header") from None
        header = Z.parse_header(head, limit, Z.CLIENT_KINDS)
        try:
            body = await reader.readexactly(header.body_length) if header.body_length else b""
        except asyncio.IncompleteReadError:
            raise Z.ProtocolError("end of stream inside a frame body") from None
        return Z.Frame(header.kind, header.opcode, header.frame_id, body, header.version)

    # ---- requests ------------------------------------------------------------

    async def _on_request(self, frame: Z.Frame) -> None:
        started = time.perf_counter()
        op = frame.opcode
        if not self.session.hello and op != Z.Op.Hello:
            await self._respond(op, frame.frame_id, Z.error_body("invalid_argument", "HELLO required"), started)
            await self._linger_close()
            return
        # HELLO is decoded under the strictest limits (it is small, and may come
        # from anyone); other bodies under limits.max_items / max_depth.
        limits = Z.HELLO_LIMITS if op == Z.Op.Hello else self.server.body_limits
        try:
            body = Z.decode_body(frame.body, limits)
        except Z.BadBody as e:
            self.node.metrics.zap_frames_rejected.labels("bad_body").inc()
            client_error(self.node.metrics, "zap", "bad_body", "zap: bad body from %s: %s", self.peer, e)
            await self._respond(op, frame.frame_id, Z.error_body("invalid_argument", f"bad body: {e}"), started)
            if not self.session.hello:  # an undecodable HELLO: nothing to keep the connection for
                await self._linger_close()
            return
        if op == Z.Op.Hello:
            resp = await self._hello(body)
            await self._respond(op, frame.frame_id, resp, started)
            if resp.get("status") == 401:  # SPEC §8.3: a missing or invalid token closes the session
                await self._linger_close()
            return
        route = ROUTES.get(op)
        if route is None:
            msg = f"unknown opcode 0x{op:04X}" if op not in Z.OPCODES else f"{Z.OPCODES[op]} is not a request"
            await self._respond(op, frame.frame_id, Z.error_body("not_implemented", msg), started)
            return
        refused = self._refused(route)
        if refused is not None:
            await self._respond(op, frame.frame_id, self._error(refused), started)
            return
        if len(self.tasks) >= Z.MAX_IN_FLIGHT:
            self.node.metrics.rate_limited.labels("zap_inflight").inc()
            resp = Z.error_body(
                "rate_limited", f"more than {Z.MAX_IN_FLIGHT} requests in flight on this connection", retry_after=1
            )
            await self._respond(op, frame.frame_id, resp, started)
            return
        # The namespace is resolved now, not in the task, so that a later HELLO
        # never changes the scope of a request that arrived before it.
        try:
            ns = self._namespace(body)
        except ApiError as e:
            await self._respond(op, frame.frame_id, self._error(e), started)
            return
        call = Call(self.node, names.storage_org(self.session.org), ns, body, self)
        task = asyncio.create_task(self._serve(frame, route, call, started), name=f"zap-{_label(op)}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _hello(self, body: Json) -> Json:
        """HELLO (0x0001): who the caller is (SPEC §8.3).

        With auth on, ``auth_token`` is verified (401 closes the session); a
        later HELLO refreshes the token but may not change the org (403: the
        session keeps its identity). With auth off the token is ignored and
        the org is the dev org."""
        try:
            client_id = names.check_id(body.get("client_id"), "client_id")
            sdk_name = text(body, "sdk_name") or ""
            sdk_version = text(body, "sdk_version") or ""
            ns = body.get("namespace")
            if ns is not None:
                names.check_namespace(ns)
            token = body.get("auth_token")
            if token is not None and not isinstance(token, str):
                raise ApiError("invalid_argument", "auth_token must be a string")
            caller = await self.node.auth.authenticate(token)
        except ApiError as e:
            return self._error(e)
        s = self.session
        if s.hello and caller.org != s.caller.org:
            return self._error(ApiError("permission_denied", "HELLO may not change the session's org"))
        s.hello, s.client_id, s.sdk, s.caller = True, client_id, (sdk_name, sdk_version), caller
        if ns is not None:
            s.namespace = ns
        return Z.response_body(200, {
            "node_id": self.node.node_id,
            "server_version": self.node.version,
            "max_frame": self.server.max_frame,
            "org": s.org,
            "namespace": s.namespace or self.server.default_namespace,
        })

    def _refused(self, route: Route) -> ApiError | None:
        """Why the session may not make this request now: its token expired
        (a fresh HELLO cures it; subscriptions are kept). None while auth is off."""
        caller = self.session.caller
        if not self.node.auth.enabled:
            return None
        if caller.expired():
            self.node.metrics.auth_failures.labels("expired").inc()
            return ApiError("unauthenticated", "token expired")
        return None

    async def _check_role(self, route: Route, call: Call) -> None:
        """403 unless the session's role in the request's namespace (its
        Identity record there, else the token's org role) reaches the route's."""
        caller = self.session.caller
        if not self.node.auth.enabled:
            return
        role = await call.service.namespaces.role_in(call.org, call.ns, caller.email, caller.role)
        if not role_allows(role, route.role):
            raise ApiError("permission_denied", f"this needs the {route.role} role; the caller has {role}")

    def _namespace(self, body: Json) -> str:
        ns = body.get("namespace")
        if ns is None:
            ns = self.session.namespace or self.server.default_namespace
        return names.check_namespace(ns)

    def _error(self, e: ApiError) -> Json:
        metrics = self.node.metrics
        if e.code == "storage_full":
            metrics.storage_full.inc()
        elif e.code == "rate_limited":
            metrics.rate_limited.labels("namespace").inc()
        retry = max(1, int(e.retry_after or 1)) if e.status in (429, 503) else None
        return Z.error_body(e.code, e.message, e.details, status=e.status, retry_after=retry)

    async def _serve(self, frame: Z.Frame, route: Route, call: Call, started: float) -> None:
        try:
            await self._check_role(route, call)
            if route.read:
                ns = route.barrier_ns(call) if route.barrier_ns else call.ns
                await call.service.read_barrier(call.org, ns)
            resp = Z.response_body(200, await route.handler(call))
            if frame.opcode in _SUBSCRIBE_OPS:
                self.subscribed = True
        except ApiError as e:
            resp = self._error(e)
        except asyncio.CancelledError:
            raise
        except NotReplica as e:  # the layout changed while the request was served here
            resp = self._error(ApiError("unavailable", f"{e}; retry", retry_after=1))
        except Exception:
            log.exception("bug serving ZAP %s", _label(frame.opcode))
            resp = Z.error_body("internal", "internal error")
        try:
            await self._respond(frame.opcode, frame.frame_id, resp, started)
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave an unretrieved task exception behind
            log.exception("cannot answer ZAP %s", _label(frame.opcode))
            self.abort()

    async def _respond(self, opcode: int, frame_id: int, resp: Json, started: float) -> None:
        """Encode, count and send one response; an unencodable one becomes an error."""
        max_frame = self.server.max_frame
        try:
            data = Z.encode_frame(Z.RESPONSE, opcode, frame_id, resp)
        except (TypeError, ValueError, OverflowError):
            log.exception("cannot encode the ZAP response to %s", _label(opcode))
            resp = Z.error_body("internal", "internal error")
            data = Z.encode_frame(Z.RESPONSE, opcode, frame_id, resp)
        if len(data) - 4 > max_frame:
            resp = Z.error_body(
                "too_large", f"the response is {len(data) - 4} bytes, over max_frame {max_frame}; ask for less"
            )
            data = Z.encode_frame(Z.RESPONSE, opcode, frame_id, resp)
        label = _label(opcode)
        metrics = self.node.metrics
        metrics.zap_requests.labels(label, str(resp["status"])).inc()
        metrics.zap_duration.labels(label).observe(time.perf_counter() - started)
        await self._write(data)

    async def _write(self, data: bytes) -> None:
        if self.closed:
            return
        async with self._lock:
            if self.closed:
                return
            try:
                self.writer.write(data)
                await asyncio.wait_for(self.writer.drain(), WRITE_TIMEOUT)
            except (ConnectionError, OSError, TimeoutError, RuntimeError):
                # RuntimeError: the transport is already shut for writing.
                self.abort()

    async def _linger_close(self) -> None:
        """Send FIN after the final response, discard input briefly, then close.

        Closing a socket with unread input makes the kernel send RST, and the
        client may then lose the response that explains why it was closed.
        """
        if self.closed:
            return
        self.closed = True  # in-flight requests must not write after the FIN
        try:
            if self.writer.can_write_eof():
                self.writer.write_eof()
            deadline = time.monotonic() + LINGER_TIMEOUT
            while (left := deadline - time.monotonic()) > 0:
                chunk = await asyncio.wait_for(self.reader.read(65536), left)
                if not chunk:
                    break
        except (TimeoutError, ConnectionError, OSError, RuntimeError):
            pass
        self.close()

    def close(self) -> None:
        """Stop using the connection; in-flight requests finish and drop their answers."""
        self.closed = True
        if not self._shut:
            self._shut = True
            self._released()
            with contextlib.suppress(Exception):
                self.writer.close()

    def abort(self) -> None:
        """Close at once, discarding unsent output (a stuck or broken peer)."""
        self.closed = True
        if not self._shut:
            self._shut = True
            self._released()
            with contextlib.suppress(Exception):
                self.writer.transport.abort()

    def _released(self) -> None:
        """The subscriptions of this connection end with it (their tasks fail: worker_lost)."""
        for fut in self._pushes.values():
            if not fut.done():
                fut.set_result(0)
        d = getattr(self.node, "dispatcher", None)
        if d is not None:
            d.connection_closed(self)


class ZapServer:
    """The ZAP listener of one node."""

    def __init__(self, node: Any) -> None:
        self.node = node
        cfg = node.cfg
        lim = cfg.listeners
        self.max_frame: int = cfg.limits.max_frame
        self.max_connections: int = connection_caps(cfg).zap
        self.max_per_address: int = lim.zap_max_connections_per_address
        self.max_unauth_frame: int = min(lim.zap_max_unauthenticated_frame, self.max_frame)
        self.hello_timeout: float = lim.zap_hello_timeout / 1000.0
        self.idle_timeout: float = lim.zap_idle_timeout / 1000.0
        self.frame_timeout: float = lim.zap_frame_timeout / 1000.0
        self.body_limits = Z.BodyLimits(max_str_len=cfg.limits.max_frame, max_items=cfg.limits.max_items,
                                        max_depth=cfg.limits.max_depth)
        """How an authenticated request body is decoded (HELLO: ``Z.HELLO_LIMITS``)."""
        self.default_namespace: str = cfg.default_namespace
        self._server: asyncio.Server | None = None
        self._conns: dict[_Connection, asyncio.Task[Any] | None] = {}
        self._per_address: dict[str, int] = {}
        self._warned: dict[str, float] = {}

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self, host: str, port: int, tls: SSLContext | None = None) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one). ``tls``:
        ZAP over TLS (docs/tls.md; the handshake, bounded to 10 s, completes before ``_accept``)."""
        self._server = await asyncio.start_server(
            self._accept, host or None, port, reuse_address=True, limit=STREAM_LIMIT,
            ssl=tls, ssl_handshake_timeout=10.0 if tls else None,
        )
        sockets = self._server.sockets
        return sockets[0].getsockname()[1] if sockets else port

    @staticmethod
    def address_of(writer: asyncio.StreamWriter) -> str:
        """The remote host of a connection ("" when unknown, e.g. a Unix socket)."""
        peer = writer.get_extra_info("peername")
        return str(peer[0]) if isinstance(peer, tuple) and peer else ""

    def _refuse(self, writer: asyncio.StreamWriter, reason: str, msg: str, *args: Any) -> None:
        """Close a connection at accept. The node-wide cap is the operator's
        business: a WARNING, at most once a minute. One address over its own
        cap is that client's doing (a flood, or many clients behind one NAT):
        a rate-limited INFO line (``client_error``; the count is
        ``tasks_connection_limits_total``, so it is not counted again)."""
        self.node.metrics.connection_limited("zap", reason)
        if reason == "per_address":
            client_error(None, "zap", reason, msg, *args)
        else:
            now = time.monotonic()
            if now - self._warned.get(reason, -WARN_EVERY) >= WARN_EVERY:
                self._warned[reason] = now
                log.warning(msg + " (logged at most once a minute)", *args)
        writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.max_connections:
            self._refuse(writer, "max_connections",
                         "zap: connection limit %d reached; closing new connections", self.max_connections)
            return
        addr = self.address_of(writer)
        held = self._per_address.get(addr, 0)
        if self.max_per_address and held >= self.max_per_address:
            self._refuse(writer, "per_address", "zap: %s holds %d connections "
                         "(listeners.zap_max_connections_per_address); closing new ones from it", addr, held)
            return
        self._per_address[addr] = held + 1
        conn = _Connection(self, reader, writer)
        self._conns[conn] = asyncio.current_task()
        gauge = self.node.metrics.zap_connections
        gauge.inc()
        try:
            await conn.run()
        except asyncio.CancelledError:
            # stop() cancels open connections. This task is the top of its stack,
            # so ending normally is safe, and it spares Python 3.11's start_server
            # callback from logging the cancellation as an error.
            pass
        finally:
            self._conns.pop(conn, None)
            left = self._per_address.get(addr, 1) - 1
            if left > 0:
                self._per_address[addr] = left
            else:
                self._per_address.pop(addr, None)
            gauge.dec()

    async def stop(self) -> None:
        """Stop accepting, then close every connection and cancel its requests."""
        if self._server is not None:
            self._server.close()
        pending: list[asyncio.Task[Any]] = []
        for conn, task in list(self._conns.items()):
            conn.abort()
            pending.extend(conn.tasks)
            if task is not None:
                pending.append(task)
        for t in pending:
            t.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


__all__ = ["ROUTES", "Call", "Session", "ZapServer"]
