"""The ZAP client connection (SPEC §8): one TCP session to a server, on its own loop.

Why a private event loop on a daemon thread: a :class:`~tasks.Client` is used
from plain synchronous code, from coroutines of any loop, and by the
:class:`~tasks.Worker` that shares it. Owning the loop means none of those
callers has to lend us theirs, a blocked caller never stalls the socket (push
acks and heartbeats keep flowing), and ``call`` can be a plain blocking
function.

What this module does, and nothing more:

* connect (over TLS for a ``zaps://host:port`` address, docs/tls.md), then
  HELLO (0x0001) before anything else (§8.3);
* requests with ids unique among those in flight and never 0, answered out of
  order and matched by id (§8.1); many requests may be in flight at once;
* pushes (kind 3) are offered to the registered :class:`PushRoute` objects
  (one per worker) and answered with a kind-4 push-ack carrying the same
  opcode and id (§8.2, §8.6);
* reconnection with back-off 0.1 s doubling to 10 s, ±20 % jitter, while
  something needs the session kept alive (a worker's reconnect hook), followed
  by HELLO and the hooks (so that workers re-subscribe);
* error responses become the :mod:`tasks.errors` classes via ``error_from``;
  failure to connect is :class:`ConnectFailed` (an ``Unavailable``), which tells
  the client it may use HTTP instead, because nothing was sent.

The codec lives in :mod:`protocol.zap`, shared with the server, so that both
sides agree byte for byte.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import importlib.metadata
import logging
import os
import random
import re
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from hanzo_tasks.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    TasksError,
    Timeout,
    TooLarge,
    Unavailable,
    error_from,
)
from hanzo_tasks.protocol import hostport
from hanzo_tasks.protocol import zap as Z

__all__ = [
    "BACKOFF_INITIAL_S",
    "BACKOFF_MAX_S",
    "CONNECT_TIMEOUT_S",
    "DEFAULT_CALL_TIMEOUT_S",
    "SDK_NAME",
    "SDK_VERSION",
    "ConnectFailed",
    "PushRoute",
    "ZapConnection",
    "default_identity",
    "ZAP_TLS_SCHEME",
    "split_host_port",
    "split_zap_address",
]

log = logging.getLogger("hanzo_tasks.zap")

SDK_NAME = "hanzo-tasks-python"


def _sdk_version() -> str:
    try:
        return importlib.metadata.version("hanzo-tasks")
    except Exception:  # noqa: BLE001 - not installed as a distribution (a source checkout)
        return "0.1.0"


SDK_VERSION = _sdk_version()

CONNECT_TIMEOUT_S = 5.0
"""Bound on TCP connect plus HELLO; an unreachable server must not hang a call."""
DEFAULT_CALL_TIMEOUT_S = 10.0
"""Same as the HTTP transport's per-request timeout (SPEC §2.4)."""
BACKOFF_INITIAL_S = 0.1
BACKOFF_MAX_S = 10.0
JITTER = 0.2
"""±20 %: spreads the reconnects of many workers after a server restart."""
CLOSE_TIMEOUT_S = 5.0

_BAD_ID_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f/]")


def split_host_port(addr: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[::1]:port"`` -> (host, port); InvalidArgument otherwise."""
    try:
        host, port = hostport.split_host_port(addr)
    except ValueError:
        port = 0
    if port == 0:  # a client must connect somewhere: port 0 is no address
        raise InvalidArgument(f"ZAP address must be host:port, got {addr!r}")
    return host, port


ZAP_TLS_SCHEME = "zaps://"
"""A ZAP address that begins with this is reached over TLS (without it: plaintext)."""


def split_zap_address(addr: str) -> tuple[str, int, bool]:
    """``[zaps://]host:port`` -> (host, port, over TLS); InvalidArgument otherwise."""
    tls = addr.startswith(ZAP_TLS_SCHEME)
    host, port = split_host_port(addr[len(ZAP_TLS_SCHEME):] if tls else addr)
    return host, port, tls


CLIENT_CERT_HINT = (
    " (over TLS, a server that requires a client certificate closes the connection of a "
    "client without a trusted one: give cert_file=/key_file= or TASKS_CERT_FILE/TASKS_KEY_FILE)"
)


def tls_problem(e: BaseException, where: str) -> str | None:
    """A clear sentence for a TLS failure (None when ``e`` is not one): which
    certificate was refused and why, and what to give the client."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return (f"TLS: the certificate of {where} is not trusted ({e.verify_message}); "
                "give the client the CA bundle that signed it (ca_file= or TASKS_CA_FILE)")
    if isinstance(e, ssl.SSLError):
        return f"TLS with {where} failed: {e.reason or e}{CLIENT_CERT_HINT}"
    return None


def default_identity() -> str:
    """``<pid>@<hostname>`` (SPEC §3), made a valid Id whatever the hostname holds."""
    ident = f"{os.getpid()}@{socket.gethostname() or 'localhost'}"
    ident = _BAD_ID_CHARS.sub("_", ident)
    return ident.encode("utf-8", "ignore")[:255].decode("utf-8", "ignore") or str(os.getpid())


class ConnectFailed(Unavailable):
    """The session could not be established: nothing of the call was sent.

    Distinct from a connection lost *during* a call (a plain ``Unavailable``,
    outcome unknown), because only this one lets the client try HTTP instead
    without risking a double effect (SPEC §2.4).
    """


class PushRoute(Protocol):
    """Something that handles server pushes (a worker). Called on the connection's loop.

    ``push_claim`` says how well the push matches: 0 not mine, 1 plausible (for
    example the right task queue, but a subscription id not known yet), 2 exact
    (my subscription, my task token). The highest claim wins; ``on_push`` then
    returns the push-ack body, and must not block: it starts work and returns.
    """

    def push_claim(self, opcode: int, body: dict[str, Any]) -> int: ...

    def on_push(self, opcode: int, body: dict[str, Any]) -> dict[str, Any]: ...


ReconnectHook = Callable[[int], Awaitable[None]]
"""Called (as a task) with the new session's generation after every (re)connect."""


class Session:
    """One TCP connection after HELLO: its streams, in-flight requests and id counter."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, generation: int
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.generation = generation
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.closed = False
        self.max_frame = Z.DEFAULT_MAX_FRAME
        self.hello: dict[str, Any] = {}
        self.read_task: asyncio.Task[None] | None = None
        self._next_id = 1

    def new_id(self) -> int:
        """An id not in flight, never 0, wrapping after 2**32 - 1."""
        while True:
            fid = self._next_id
            self._next_id = fid + 1 if fid < Z.MAX_FRAME_ID else 1
            if fid not in self.pending:
                return fid

    def write(self, data: bytes) -> None:
        if self.closed or self.writer.is_closing():
            raise Unavailable("ZAP connection lost")
        self.writer.write(data)

    def abort(self) -> None:
        self.closed = True
        transport = self.writer.transport
        if transport is not None and not transport.is_closing():
            transport.abort()


class ZapConnection:
    """A client's ZAP session and the loop thread that owns it.

    Thread-safe: ``call``/``connect`` block the calling thread; ``acall`` and
    ``aconnect`` may be awaited from any event loop (they hop onto ours).
    Nothing connects before the first call.
    """

    def __init__(
        self,
        addr: str,
        *,
        namespace: str | None = None,
        auth_token: str | None = None,
        client_id: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """``addr``: ``host:port``, or ``zaps://host:port`` for TLS, verified with
        ``ssl_context`` (default: the system's CA store)."""
        self.addr = addr
        self._host, self._port, tls = split_zap_address(addr)
        self._ssl: ssl.SSLContext | None = None
        if tls:
            self._ssl = ssl_context if ssl_context is not None else ssl.create_default_context()
        self.namespace = namespace
        self.auth_token = auth_token
        self.client_id = client_id or f"{default_identity()}-{secrets.token_hex(4)}"

        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

        # Loop-side state (touched on the loop only, except the copy-on-write lists).
        self._session: Session | None = None
        self._generation = 0
        self._connect_lock = asyncio.Lock()
        self._connected = asyncio.Event()
        self._delay = BACKOFF_INITIAL_S
        self._retry_at = 0.0
        self._last_error = ""
        self._reconnect_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._routes: list[PushRoute] = []
        self._hooks: list[ReconnectHook] = []

    def __repr__(self) -> str:
        return f"<tasks.ZapConnection {self.addr} gen={self._generation}>"

    # -- loop thread ----------------------------------------------------------

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The connection's loop, started on first use."""
        with self._start_lock:
            if self._closed:
                raise ConnectFailed(f"ZAP connection to {self.addr} is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                self._thread = threading.Thread(
                    target=self._main, args=(loop, ready), name="tasks-zap", daemon=True
                )
                self._thread.start()
                ready.wait(5)
                self._loop = loop
            return self._loop

    def _main(self, loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            try:
                rest = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in rest:
                    t.cancel()
                if rest:
                    loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()

    def in_loop_thread(self) -> bool:
        return self._thread is not None and threading.current_thread() is self._thread

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def generation(self) -> int:
        """Counts sessions established; changes on every reconnect."""
        return self._generation

    @property
    def connected(self) -> bool:
        s = self._session
        return s is not None and not s.closed

    @property
    def server_info(self) -> dict[str, Any]:
        """The current session's HELLO answer (``node_id``, ``max_frame``, ``org``, ...)."""
        s = self._session
        return dict(s.hello) if s is not None else {}

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        """A task on the loop (call on the loop) kept referenced until it ends."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        """Forget a finished background task, logging a failure nobody awaited."""
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            log.error("ZAP background task failed: %r", exc, exc_info=exc)

    def submit(self, coro: Any) -> concurrent.futures.Future[Any]:
        """Run a coroutine on the connection's loop from another thread."""
        try:
            loop = self.loop
        except BaseException:
            coro.close()  # never started: close it rather than leave a warning behind
            raise
        return asyncio.run_coroutine_threadsafe(coro, loop)

    # -- registration (any thread) ------------------------------------------

    def add_push_route(self, route: PushRoute) -> None:
        self._routes = [*self._routes, route]

    def remove_push_route(self, route: PushRoute) -> None:
        self._routes = [r for r in self._routes if r is not route]

    def add_reconnect_hook(self, hook: ReconnectHook) -> None:
        """Keep the session alive (reconnect on loss) and call ``hook`` after each connect."""
        self._hooks = [*self._hooks, hook]

    def remove_reconnect_hook(self, hook: ReconnectHook) -> None:
        self._hooks = [h for h in self._hooks if h is not hook]

    # -- public calls ----------------------------------------------------------

    def call(
        self,
        opcode: int,
        body: dict[str, Any] | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT_S,
    ) -> Any:
        """Send one request and block for its answer's ``body``; errors raise ``TasksError``."""
        if self.in_loop_thread():
            raise FailedPrecondition(
                "a blocking ZAP call from the connection's own loop would deadlock; "
                "use the async variant (acall / anow / aadd) in coroutines"
            )
        fut = self.submit(self._acall(opcode, body, timeout))
        try:
            return fut.result(timeout + CONNECT_TIMEOUT_S + 1.0)
        except concurrent.futures.TimeoutError:
            fut.cancel()
            raise Timeout(
                f"no ZAP response to {Z.opcode_name(opcode)} within {timeout:g}s"
            ) from None

    async def acall(
        self,
        opcode: int,
        body: dict[str, Any] | None = None,
        timeout: float = DEFAULT_CALL_TIMEOUT_S,
    ) -> Any:
        """``call`` for coroutines, from any event loop."""
        return await self.hop(self._acall(opcode, body, timeout))

    def connect(self) -> None:
        """Establish the session now (blocking); ``ConnectFailed`` when it cannot be."""
        if self.in_loop_thread():
            raise FailedPrecondition("connect() cannot block the connection's own loop")
        self.submit(self.asession()).result(CONNECT_TIMEOUT_S * 2 + 1.0)

    async def aconnect(self) -> None:
        await self.hop(self.asession())

    async def hop(self, coro: Any) -> Any:
        """Await ``coro`` on the connection's loop from any loop (or directly when on it)."""
        try:
            loop = self.loop
        except BaseException:
            coro.close()
            raise
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return await coro
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    async def _acall(self, opcode: int, body: dict[str, Any] | None, timeout: float) -> Any:
        session = await self.asession()
        return await self.arequest(session, opcode, body, timeout)

    # -- loop side: sessions ------------------------------------------------------

    async def asession(self) -> Session:
        """The live session, connecting (one attempt) if there is none. On the loop only.

        Within the back-off window after a failure no attempt is made: the
        caller gets ``ConnectFailed`` at once (and the client uses HTTP or
        retries later) instead of paying a connect timeout on every call.
        """
        s = self._session
        if s is not None and not s.closed:
            return s
        async with self._connect_lock:
            s = self._session
            if s is not None and not s.closed:
                return s
            if self._closed:
                raise ConnectFailed(f"ZAP connection to {self.addr} is closed")
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                raise ConnectFailed(
                    f"ZAP server {self.addr} unreachable ({self._last_error}); "
                    f"next attempt in {wait:.2f}s"
                )
            try:
                s = await self._open()
            except TasksError as e:
                self._last_error = e.message
                self._note_failure()
                raise
            self._delay = BACKOFF_INITIAL_S
            self._retry_at = 0.0
            self._session = s
            self._connected.set()
            for hook in self._hooks:
                self.spawn(self._run_hook(hook, s.generation))
            return s

    async def _run_hook(self, hook: ReconnectHook, generation: int) -> None:
        try:
            await hook(generation)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one worker's bug must not stop the others
            log.exception("ZAP reconnect hook failed")

    def _note_failure(self) -> None:
        jittered = self._delay * random.uniform(1.0 - JITTER, 1.0 + JITTER)
        self._retry_at = time.monotonic() + jittered
        self._delay = min(self._delay * 2.0, BACKOFF_MAX_S)

    async def _open(self) -> Session:
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl)
        except (OSError, TimeoutError) as e:
            problem = tls_problem(e, f"ZAP server {self.addr}")
            if problem is not None:
                raise ConnectFailed(problem) from None
            raise ConnectFailed(
                f"cannot connect to ZAP server {self.addr}: {e or type(e).__name__}"
            ) from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s = Session(reader, writer, self._generation + 1)
        s.read_task = asyncio.get_running_loop().create_task(self._read_loop(s))
        hello: dict[str, Any] = {
            "client_id": self.client_id,
            "sdk_name": SDK_NAME,
            "sdk_version": SDK_VERSION,
        }
        if self.namespace:
            hello["namespace"] = self.namespace
        if self.auth_token:
            hello["auth_token"] = self.auth_token
        try:
            answer = await self.arequest(s, Z.Op.Hello, hello, CONNECT_TIMEOUT_S)
        except (Unavailable, Timeout) as e:
            await self._discard(s)
            hint = CLIENT_CERT_HINT if self._ssl is not None and not isinstance(e, Timeout) else ""
            raise ConnectFailed(f"ZAP HELLO to {self.addr} failed: {e.message}{hint}") from None
        except BaseException:
            await self._discard(s)
            raise
        if isinstance(answer, dict):
            s.hello = answer
            mf = answer.get("max_frame")
            if isinstance(mf, int) and not isinstance(mf, bool) and mf >= Z.MIN_LENGTH:
                s.max_frame = mf
        self._generation = s.generation
        return s

    async def _discard(self, s: Session) -> None:
        s.abort()
        if s.read_task is not None:
            s.read_task.cancel()
            with contextlib.suppress(BaseException):
                await s.read_task

    async def _read_loop(self, s: Session) -> None:
        reason = "closed by the server"
        try:
            while True:
                frame = await Z.read_frame(
                    s.reader, max(Z.DEFAULT_MAX_FRAME, s.max_frame), Z.SERVER_KINDS
                )
                if frame is None:
                    break
                if frame.kind == Z.RESPONSE:
                    self._on_response(s, frame)
                else:
                    self._on_push(s, frame)
        except asyncio.CancelledError:
            reason = "closed"
        except (Z.ZapError, OSError, ConnectionError) as e:
            reason = f"{type(e).__name__}: {e}"
        finally:
            self._drop(s, reason)

    def _drop(self, s: Session, reason: str) -> None:
        """The session ended: fail its requests, and reconnect if something needs it."""
        s.abort()
        for fut in s.pending.values():
            if not fut.done():
                fut.set_exception(Unavailable(f"ZAP connection lost ({reason})"))
        s.pending.clear()
        if self._session is not s:
            return
        self._session = None
        self._connected.clear()
        if self._closed:
            return
        log.info("ZAP connection to %s lost: %s", self.addr, reason)
        self._last_error = f"connection lost: {reason}"
        self._note_failure()  # the first reconnect waits ~0.1 s too
        if self._hooks and (self._reconnect_task is None or self._reconnect_task.done()):
            self._reconnect_task = self.spawn(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        while not self._closed and self._hooks and not self.connected:
            await asyncio.sleep(max(0.0, self._retry_at - time.monotonic()))
            if self._closed or not self._hooks or self.connected:
                return
            try:
                await self.asession()
            except TasksError as e:
                log.debug("ZAP reconnect to %s failed: %s", self.addr, e)
        if self.connected:
            log.info("ZAP reconnected to %s", self.addr)

    async def wait_connected(self, timeout: float) -> bool:
        """Wait (on the loop) until a session is up; False after ``timeout``."""
        if self.connected:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._connected.wait()
        except TimeoutError:
            return False
        return self.connected

    # -- loop side: frames --------------------------------------------------------

    async def arequest(
        self, s: Session, opcode: int, body: dict[str, Any] | None, timeout: float
    ) -> Any:
        """One request on session ``s`` (not another one: subscriptions are per session)."""
        fid = s.new_id()
        try:
            data = Z.encode_frame(Z.REQUEST, int(opcode), fid, body)
        except (TypeError, ValueError, OverflowError) as e:
            raise InvalidArgument(
                f"cannot encode the {Z.opcode_name(opcode)} request: {e}"
            ) from None
        if len(data) - 4 > s.max_frame:
            raise TooLarge(
                f"{Z.opcode_name(opcode)} request of {len(data) - 4} bytes is over "
                f"the server's max_frame {s.max_frame}"
            )
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        s.pending[fid] = fut
        try:
            s.write(data)
            try:
                await s.writer.drain()
            except (ConnectionError, OSError) as e:
                raise Unavailable(f"ZAP connection lost while sending: {e}") from None
            # asyncio.timeout, not wait_for: in 3.11 wait_for can swallow a
            # cancellation that races with the answer, and a heartbeat loop
            # cancelled that way would go on beating for a finished handler.
            try:
                async with asyncio.timeout(timeout):
                    return await fut
            except TimeoutError:
                raise Timeout(
                    f"no ZAP response to {Z.opcode_name(opcode)} within {timeout:g}s"
                ) from None
        finally:
            if s.pending.get(fid) is fut:
                del s.pending[fid]

    def _on_response(self, s: Session, frame: Z.Frame) -> None:
        fut = s.pending.pop(frame.frame_id, None)
        if fut is None or fut.done():
            log.debug("ZAP response to unknown or abandoned request id %d", frame.frame_id)
            return
        try:
            status, payload, err = Z.parse_response(Z.decode_body(frame.body))
        except Z.BadBody as e:
            fut.set_exception(Internal(f"malformed ZAP response: {e}"))
            return
        if err is not None or not 200 <= status < 300:
            retry_after = err.get("retry_after") if err else None
            ra = float(retry_after) if isinstance(retry_after, int | float) else None
            fut.set_exception(error_from(status, err, retry_after=ra))
            return
        fut.set_result(payload)

    def _on_push(self, s: Session, frame: Z.Frame) -> None:
        ack: dict[str, Any]
        try:
            body = Z.decode_body(frame.body)
        except Z.BadBody as e:
            ack = Z.push_ack_body(400, {"code": "invalid_argument", "message": f"bad body: {e}"})
        else:
            ack = self._route_push(frame.opcode, body)
        try:
            s.write(Z.encode_frame(Z.PUSH_ACK, frame.opcode, frame.frame_id, ack))
        except (TasksError, TypeError, ValueError, OverflowError) as e:
            log.debug("cannot ack ZAP push %s: %s", Z.opcode_name(frame.opcode), e)

    def _route_push(self, opcode: int, body: dict[str, Any]) -> dict[str, Any]:
        best: PushRoute | None = None
        best_claim = 0
        for route in self._routes:
            try:
                claim = route.push_claim(opcode, body)
            except Exception:  # noqa: BLE001
                log.exception("push_claim failed")
                continue
            if claim > best_claim:
                best, best_claim = route, claim
        if best is None:
            if opcode in (Z.Op.DeliverActivityResult, Z.Op.DeliverCancelRequest):
                return Z.push_ack_body(200)  # informational (§8.6); nothing here to tell
            return Z.push_ack_body(
                400,
                {"code": "invalid_argument", "message": f"no handler for {Z.opcode_name(opcode)}"},
            )
        try:
            return best.on_push(opcode, body)
        except Exception as e:  # noqa: BLE001 - a bug answers 400, never kills the reader
            log.exception("handling ZAP push %s failed", Z.opcode_name(opcode))
            return Z.push_ack_body(400, {"code": "internal", "message": str(e) or type(e).__name__})

    # -- close ----------------------------------------------------------------------

    def close(self, timeout: float = CLOSE_TIMEOUT_S) -> None:
        """Close the session and stop the loop thread. Idempotent; never raises."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            self.spawn(self._aclose(stop_loop=True))
            return
        try:
            asyncio.run_coroutine_threadsafe(self._aclose(stop_loop=False), loop).result(timeout)
        except Exception:  # noqa: BLE001 - closing must not fail
            log.debug("ZAP close did not finish cleanly", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)

    async def _aclose(self, stop_loop: bool) -> None:
        if self._reconnect_task is not None:
            self._reconnect_task.cancel()
        s, self._session = self._session, None
        self._connected.clear()
        if s is not None:
            with contextlib.suppress(Exception):
                s.writer.close()
            await self._discard(s)
            self._drop(s, "closed")
        if stop_loop:
            asyncio.get_running_loop().stop()
