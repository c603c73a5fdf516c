"""Client mistakes (and client abuse) as a counter and a quiet, rate-limited log line.

Why: a body cut short, a lying Content-Length, a malformed request line or an
undecodable ZAP body is the client's doing, not a bug of the node. Logged as
ERROR with a traceback, a hostile client can flood the log (and page whoever
watches it) at the cost of a few bytes per line. Here each such event bumps
``tasks_client_errors_total{listener, kind}`` and is logged at INFO, at most
a few lines per minute per (listener, kind); the rest go to DEBUG, and the next
INFO line says how many were held back.

aiohttp logs its own parser errors ("Error handling request") on its
``aiohttp.server`` logger with a traceback; :class:`ServerLog` stands in for
that logger on the node's HTTP app (``handler_args={"logger": ...}``) and
turns those into client errors too, passing anything else through unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from aiohttp import ClientPayloadError
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("hanzo_tasks.clients")

BURST = 5
"""Lines per (listener, kind) logged at INFO before the rate limit applies."""
REFILL_SECONDS = 12.0
"""One more INFO line per (listener, kind) is allowed every this many seconds."""

CLIENT_CAUSED: tuple[type[BaseException], ...] = (
    HttpProcessingError, ClientPayloadError, ConnectionError, asyncio.IncompleteReadError,
)
"""Exceptions that only a client's bytes (or its going away) can cause."""


class _Bucket:
    __slots__ = ("held", "stamp", "tokens")

    def __init__(self, now: float) -> None:
        self.tokens = float(BURST)
        self.stamp = now
        self.held = 0


class RateLimitedLog:
    """A token bucket per key: ``allow(key)`` -> (may log at INFO, lines held back since)."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._lock = threading.Lock()

    def allow(self, key: tuple[str, str]) -> tuple[bool, int]:
        now = time.monotonic()
        with self._lock:
            b = self._buckets.get(key)
            if b is None:
                if len(self._buckets) > 1000:  # keys are a small fixed set; never grow without bound
                    self._buckets.clear()
                b = self._buckets[key] = _Bucket(now)
            b.tokens = min(float(BURST), b.tokens + (now - b.stamp) / REFILL_SECONDS)
            b.stamp = now
            if b.tokens >= 1.0:
                b.tokens -= 1.0
                held, b.held = b.held, 0
                return True, held
            b.held += 1
            return False, 0


_LIMIT = RateLimitedLog()


def client_error(metrics: Any, listener: str, kind: str, msg: str, *args: Any) -> None:
    """Count a client mistake and log it at INFO (rate-limited) or DEBUG, never with a traceback.

    ``listener`` and ``kind`` are metric labels: pass constants only, never
    text from the client."""
    counter = getattr(metrics, "client_errors", None)
    if counter is not None:
        counter.labels(listener, kind).inc()
    loud, held = _LIMIT.allow((listener, kind))
    if loud:
        if held:
            msg += " (%d more like this not logged)"
            args = (*args, held)
        log.info(msg, *args)
    else:
        log.debug(msg, *args)


def is_client_caused(exc: BaseException | None) -> bool:
    return isinstance(exc, CLIENT_CAUSED)


class ServerLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """aiohttp's server logger for one node: client-caused errors become client errors.

    aiohttp calls ``logger.exception("Error handling request from %s", ...,
    exc_info=exc)`` for a request it could not parse; the exception says
    whether the client caused it (``HttpProcessingError``: bad request line,
    header too long, bad chunking, lying Content-Length). Those are counted as
    ``http/malformed_request`` (``http/disconnect`` for a connection error);
    every other record passes to ``aiohttp.server`` unchanged.
    """

    def __init__(self, metrics: Any) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.metrics = metrics

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info")
        if isinstance(exc, BaseException) and is_client_caused(exc):  # aiohttp logs some at DEBUG already
            kind = "disconnect" if isinstance(exc, ConnectionError) else "malformed_request"
            text = str(msg) % args if args else str(msg)
            client_error(self.metrics, "http", kind, "http: %s: %s: %s", text, type(exc).__name__,
                         _short(exc))
            return
        super().log(level, msg, *args, **kwargs)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return msg, kwargs


def _short(exc: BaseException) -> str:
    """The exception's message on one line, at most 200 characters (it may quote client bytes)."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


__all__ = ["BURST", "CLIENT_CAUSED", "REFILL_SECONDS", "RateLimitedLog", "ServerLog", "client_error",
           "is_client_caused"]
