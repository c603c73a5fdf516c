"""The ZAP listener of a node (SPEC §8): binary requests onto the service layer.

One asyncio TCP server on the node's loop. Each connection has one reader
task that parses frames and enforces §8.1, and one task per request, so the
requests of a connection run concurrently and may be answered out of order.
Responses are written under a per-connection lock (a frame is never
interleaved with another) with a write deadline, so a client that stops
reading stalls only its own connection; a malformed frame closes only its own
connection; every request gets exactly one response.

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
import time
from dataclasses import dataclass, field
from typing import Any

from hanzo_tasks.cluster.api.client_errors import client_error
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
                frame = await Z.read_frame(self.reader, self.server.max_frame, Z.CLIENT_KINDS)
            except Z.FrameTooLarge as e:
                metrics.zap_frames_rejected.labels("too_large").inc()
                await self._respond(e.opcode, e.frame_id, Z.error_body("too_large", str(e)), time.perf_counter())
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
        self.max_frame: int = cfg.limits.max_frame
        self.max_connections: int = cfg.limits.max_zap_connections
        self.body_limits = Z.BodyLimits(max_str_len=cfg.limits.max_frame, max_items=cfg.limits.max_items,
                                        max_depth=cfg.limits.max_depth)
        """How an authenticated request body is decoded (HELLO: ``Z.HELLO_LIMITS``)."""
        self.default_namespace: str = cfg.default_namespace
        self._server: asyncio.Server | None = None
        self._conns: dict[_Connection, asyncio.Task[Any] | None] = {}

    @property
    def connections(self) -> int:
        return len(self._conns)

    async def start(self, host: str, port: int) -> int:
        """Listen; returns the bound port (``port`` 0 picks a free one)."""
        self._server = await asyncio.start_server(self._accept, host or None, port, reuse_address=True)
        sockets = self._server.sockets
        return sockets[0].getsockname()[1] if sockets else port

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._conns) >= self.max_connections:
            log.warning("zap: connection limit %d reached; closing a new connection", self.max_connections)
            writer.transport.abort()
            return
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
