"""The HTTP listener's limits: a connection cap (in total and per remote address),
the keep-alive timeout and a deadline for request bodies (``listeners.http_*``).

aiohttp has its own settings for some of it and they are used: its
``keepalive_timeout`` starts when a connection is made and is re-armed after
each response, and it closes the connection while no complete request is
waiting, so it bounds both an idle keep-alive connection and a client that
never finishes its request headers. aiohttp has no connection cap and no body
deadline, so this module adds them:

* :class:`HttpRunner` is an ``AppRunner`` whose protocol factory puts a gate in
  front of each connection: past the cap, the connection is answered
  ``503 Service Unavailable`` with ``Retry-After: 1`` and closed at once,
  before anything is parsed (the gate sees the remote address, which a
  protocol factory does not).
* a middleware arms a timer per request whose body has not fully arrived when
  the handler starts; when it fires, the body's stream fails with ``408
  Request Timeout`` (aiohttp answers it and closes the connection).
* :class:`HttpSite` is a ``TCPSite`` that bounds the TLS handshake. Over HTTPS
  neither the gate nor aiohttp's keep-alive timer sees a connection until its
  handshake is done (asyncio calls ``connection_made`` only then), and
  ``TCPSite`` passes no handshake timeout, so asyncio's default of 60 s applied
  to a client that connects and never sends its ClientHello. The site gives
  ``loop.create_server`` the runner's ``tls_handshake_timeout``: the keep-alive
  timeout, at most :data:`TLS_HANDSHAKE_TIMEOUT` (a connection in its handshake
  has no complete request either).

Each refusal is counted in ``tasks_connection_limits_total{listener="http"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from hanzo_tasks.cluster.api.client_errors import client_error
from hanzo_tasks.cluster.api.fd_budget import connection_caps

log = logging.getLogger("hanzo_tasks.http")

WARN_EVERY = 60.0
"""A repeated warning about refused connections is logged at most this often."""
TLS_HANDSHAKE_TIMEOUT = 10.0
"""Longest TLS handshake of an HTTPS connection, in seconds (the ZAP listener's too)."""

_BUSY_BODY = json.dumps({"code": "unavailable", "message": "too many connections; retry"}).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY
)
"""What a connection past the cap receives before it is closed."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ConnectionGate:
    """Counts the open connections of one HTTP listener, in total and per address."""

    def __init__(self, max_total: int, max_per_address: int, metrics: Any) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.metrics = metrics
        self.open = 0
        self.per_address: dict[str, int] = {}
        self._warned: dict[str, float] = {}

    def admit(self, addr: str) -> str | None:
        """Take a slot for a connection from ``addr``; the reason it is refused, or None."""
        if self.max_total and self.open >= self.max_total:
            return "max_connections"
        held = self.per_address.get(addr, 0)
        if self.max_per_address and held >= self.max_per_address:
            return "per_address"
        self.open += 1
        self.per_address[addr] = held + 1
        return None

    def release(self, addr: str) -> None:
        self.open -= 1
        left = self.per_address.get(addr, 1) - 1
        if left > 0:
            self.per_address[addr] = left
        else:
            self.per_address.pop(addr, None)

    def refused(self, addr: str, reason: str) -> None:
        """Count a refusal; log it as the ZAP listener does: the node-wide cap as a
        WARNING at most once a minute, one address over its cap as a client error
        (INFO, rate-limited, not counted again in ``tasks_client_errors_total``)."""
        self.metrics.connection_limited("http", reason)
        if reason == "per_address":
            client_error(None, "http", reason, "http: %s holds %d connections "
                         "(listeners.http_max_connections_per_address); answering 503 to new ones from it",
                         addr, self.per_address.get(addr, 0))
            return
        now = time.monotonic()
        if now - self._warned.get(reason, -WARN_EVERY) >= WARN_EVERY:
            self._warned[reason] = now
            cap = self.max_total if reason == "max_connections" else self.max_per_address
            log.warning("http: %s connection limit %d reached (latest from %s); new connections "
                        "are answered 503 (logged at most once a minute)", reason, cap, addr)


class _GatedConnection(asyncio.Protocol):
    """One accepted connection: admitted to aiohttp's handler, or answered 503 and closed."""

    def __init__(self, gate: ConnectionGate, make_handler: Callable[[], Any]) -> None:
        self._gate = gate
        self._make_handler = make_handler
        self._inner: Any = None
        self._addr: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        reason = self._gate.admit(addr)
        if reason is not None:
            self._gate.refused(addr, reason)
            try:
                transport.write(BUSY_RESPONSE)  # type: ignore[attr-defined]
            finally:
                transport.close()
            return
        self._addr = addr
        self._inner = self._make_handler()
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._addr is not None:
            self._gate.release(self._addr)
            self._addr = None
        if self._inner is not None:
            self._inner.connection_lost(exc)


class HttpRunner(web.AppRunner):
    """An ``AppRunner`` with the node's HTTP limits: aiohttp's keep-alive timeout,
    a body deadline middleware (added to ``app`` before it is frozen) and a
    connection gate in front of aiohttp's protocol factory."""

    __slots__ = ("gate", "tls_handshake_timeout")

    def __init__(self, app: web.Application, cfg: Any, metrics: Any, **kwargs: Any) -> None:
        lim = cfg.listeners
        kwargs.setdefault("keepalive_timeout", lim.http_keepalive_timeout / 1000.0)
        super().__init__(app, **kwargs)
        self.tls_handshake_timeout = min(TLS_HANDSHAKE_TIMEOUT, lim.http_keepalive_timeout / 1000.0)
        """Seconds an HTTPS connection may take to complete its TLS handshake (:class:`HttpSite`)."""
        self.gate = ConnectionGate(connection_caps(cfg).http, lim.http_max_connections_per_address, metrics)
        app.middlewares.append(body_deadline(lim.http_body_timeout / 1000.0, metrics))

    @property
    def server(self) -> Any:
        """The protocol factory the sites listen with: aiohttp's, behind the gate."""
        inner = super().server
        if inner is None:
            return None
        gate = self.gate
        return lambda: _GatedConnection(gate, inner)


class HttpSite(web.TCPSite):
    """A ``TCPSite`` whose TLS handshakes are bounded by the runner's
    ``tls_handshake_timeout`` (``TLS_HANDSHAKE_TIMEOUT`` for another runner).

    ``TCPSite.start`` has no way to pass ``ssl_handshake_timeout`` to
    ``loop.create_server``; this ``start`` does what it does, with it."""

    __slots__ = ()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        tls = self._ssl_context
        timeout = getattr(self._runner, "tls_handshake_timeout", TLS_HANDSHAKE_TIMEOUT)
        self._server = await asyncio.get_running_loop().create_server(
            server, self._host, self._port, ssl=tls, backlog=self._backlog,
            reuse_address=self._reuse_address, reuse_port=self._reuse_port,
            ssl_handshake_timeout=timeout if tls is not None else None,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port


def body_deadline(timeout: float, metrics: Any) -> Any:
    """Middleware: a request body not received whole within ``timeout`` s after the
    handler starts is answered 408 and its connection closed.

    The body's stream is failed with ``HTTPRequestTimeout`` (which the dispatcher
    lets through like any aiohttp HTTP exception); the 408 is then written here
    and the connection force-closed, so aiohttp does not linger reading the rest
    of a body that is not coming."""

    def expire(request: web.Request, fired: list[bool]) -> None:
        content = request.content
        if content.is_eof() or content.exception() is not None:
            return
        fired.append(True)
        metrics.connection_limited("http", "body_timeout")
        content.set_exception(web.HTTPRequestTimeout())

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.body_exists or request.content.is_eof():
            return await handler(request)
        fired: list[bool] = []
        timer = asyncio.get_running_loop().call_later(timeout, expire, request, fired)
        try:
            return await handler(request)
        except web.HTTPRequestTimeout:
            if not fired:
                raise
            resp = web.json_response(
                {"code": "request_timeout", "message": f"request body not received within {timeout:g}s"},
                status=408, headers={"Connection": "close"},
            )
            resp.force_close()
            try:
                await resp.prepare(request)
                await resp.write_eof()
            except (ConnectionError, OSError, RuntimeError):
                pass
            request.protocol.force_close()
            return resp
        finally:
            timer.cancel()

    return middleware


__all__ = ["BUSY_RESPONSE", "TLS_HANDSHAKE_TIMEOUT", "ConnectionGate", "HttpRunner", "HttpSite", "body_deadline"]
