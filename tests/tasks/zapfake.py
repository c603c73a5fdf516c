"""A small, scriptable fake ZAP server (SPEC §8) for the client and worker tests.

Built on ``protocol.zap`` (the shared codec) and nothing of ``cluster``, so the
client can be tested before the real server's worker side exists. It runs on
its own loop thread; the test thread drives it with plain blocking methods.

* Every request frame is recorded (``requests``), HELLO included; HELLO must
  come first, else 400 and close, as the real server does.
* Requests are answered concurrently, each in its own task, so a slow handler
  lets later answers overtake it (out of order).
* ``handlers[opcode]`` overrides the default answer: a function (sync or
  async) of ``(conn, body)`` returning the response body, or raising
  :class:`Reply` for an error.
* ``push()`` sends a kind-3 frame and returns the client's push-ack body.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hanzo_tasks.protocol import zap as Z


class Reply(Exception):  # noqa: N818 - it is a reply, raised to short-circuit a handler
    """Raise from a handler to answer with an error (or a given status)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str = "",
        details: dict[str, Any] | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message or code
        self.details = details
        self.retry_after = retry_after


@dataclass
class Request:
    conn: int
    opcode: int
    frame_id: int
    body: dict[str, Any]
    answer: Any = None


@dataclass
class Ack:
    conn: int
    opcode: int
    frame_id: int
    body: dict[str, Any]


@dataclass
class FakeConn:
    index: int
    writer: asyncio.StreamWriter
    hello: dict[str, Any] | None = None
    acks: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    closed: bool = False


Handler = Callable[[FakeConn, dict[str, Any]], Any]


class FakeZap:
    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.acks: list[Ack] = []
        self.conns: list[FakeConn] = []
        self.handlers: dict[int, Handler] = {}
        self.addr = ""
        self._lock = threading.Lock()
        self._sub_ids = itertools.count(1)
        self._push_ids = itertools.count(1)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-zap", daemon=True)
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> FakeZap:
        self._thread.start()
        self._run(self._start())
        return self

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.addr = f"{host}:{port}"

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for c in self.conns:
            self._close(c)
        for t in list(self._tasks):
            t.cancel()

    def _run(self, coro: Any, timeout: float = 5.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    # -- test-side API -------------------------------------------------------------

    def bodies(self, opcode: int) -> list[dict[str, Any]]:
        with self._lock:
            return [r.body for r in self.requests if r.opcode == opcode]

    def answers(self, opcode: int) -> list[Any]:
        """What this server answered to each request with ``opcode`` (None: error or pending)."""
        with self._lock:
            return [r.answer for r in self.requests if r.opcode == opcode]

    def opcodes(self, conn: int | None = None) -> list[int]:
        with self._lock:
            return [r.opcode for r in self.requests if conn is None or r.conn == conn]

    def wait_for(self, opcode: int, n: int = 1, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The bodies of the requests with ``opcode`` once there are ``n``; else AssertionError."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.bodies(opcode)
            if len(got) >= n:
                return got
            time.sleep(0.005)
        raise AssertionError(f"{Z.opcode_name(opcode)}: {len(self.bodies(opcode))} of {n} requests")

    def live(self) -> FakeConn:
        """The newest connection still open."""
        for c in reversed(self.conns):
            if not c.closed:
                return c
        raise AssertionError("no live connection")

    def push(
        self, opcode: int, body: dict[str, Any], conn: FakeConn | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """Send a push; the client's push-ack body."""
        return self._run(self._push(conn or self.live(), opcode, body), timeout)

    def drop(self, conn: FakeConn | None = None) -> None:
        """Close a connection (default: the live one) as a crashed server would."""
        c = conn or self.live()
        self._loop.call_soon_threadsafe(self._close, c)

    def subscription_id(
        self, conn: FakeConn | None = None, opcode: int = Z.Op.SubscribeWorkflowTasks
    ) -> str:
        """The subscription id this server gave last on ``conn``."""
        c = conn or self.live()
        with self._lock:
            answers = [r.answer for r in self.requests if r.conn == c.index and r.opcode == opcode]
        assert answers and isinstance(answers[-1], dict), "no subscription on this connection"
        return answers[-1]["subscription_id"]

    # -- server side -----------------------------------------------------------

    def _close(self, c: FakeConn) -> None:
        c.closed = True
        with contextlib.suppress(Exception):
            c.writer.transport.abort()
        for f in c.acks.values():
            if not f.done():
                f.set_exception(ConnectionError("closed"))

    async def _push(self, c: FakeConn, opcode: int, body: dict[str, Any]) -> dict[str, Any]:
        pid = next(self._push_ids)
        fut: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        c.acks[pid] = fut
        c.writer.write(Z.encode_frame(Z.PUSH, opcode, pid, body))
        await c.writer.drain()
        return await fut

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        c = FakeConn(len(self.conns), writer)
        self.conns.append(c)
        try:
            while not c.closed:
                frame = await Z.read_frame(reader, Z.DEFAULT_MAX_FRAME, Z.CLIENT_KINDS)
                if frame is None:
                    break
                body = Z.decode_body(frame.body)
                if frame.kind == Z.PUSH_ACK:
                    with self._lock:
                        self.acks.append(Ack(c.index, frame.opcode, frame.frame_id, body))
                    fut = c.acks.pop(frame.frame_id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(body)
                    continue
                req = Request(c.index, frame.opcode, frame.frame_id, dict(body))
                with self._lock:
                    self.requests.append(req)
                if c.hello is None and frame.opcode != Z.Op.Hello:
                    self._send(c, frame, Z.error_body("invalid_argument", "HELLO required"))
                    self._close(c)
                    break
                if frame.opcode == Z.Op.Hello:
                    c.hello = body
                t = asyncio.ensure_future(self._answer(c, frame, req))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
        except (Z.ZapError, ConnectionError, OSError):
            pass
        finally:
            self._close(c)

    async def _answer(self, c: FakeConn, frame: Z.Frame, req: Request) -> None:
        body = dict(req.body)
        try:
            handler = self.handlers.get(frame.opcode)
            out = handler(c, body) if handler is not None else self._default(frame.opcode, body)
            if inspect.isawaitable(out):
                out = await out
            resp = Z.response_body(200, out)
            req.answer = out
        except Reply as e:
            resp = Z.error_body(
                e.code, e.message, e.details, status=e.status, retry_after=e.retry_after
            )
        if not c.closed:
            self._send(c, frame, resp)

    def _send(self, c: FakeConn, frame: Z.Frame, resp: dict[str, Any]) -> None:
        with contextlib.suppress(Exception):
            c.writer.write(Z.encode_frame(Z.RESPONSE, frame.opcode, frame.frame_id, resp))

    def _default(self, opcode: int, body: dict[str, Any]) -> Any:
        if opcode == Z.Op.Hello:
            return {
                "node_id": "fake",
                "server_version": "0",
                "max_frame": Z.DEFAULT_MAX_FRAME,
                "org": "",
                "namespace": body.get("namespace") or "default",
            }
        if opcode in (Z.Op.SubscribeWorkflowTasks, Z.Op.SubscribeActivityTasks):
            return {"subscription_id": body.get("subscription_id") or f"sub-{next(self._sub_ids)}"}
        if opcode == Z.Op.RecordHeartbeat:
            return {"cancel_requested": False}
        if opcode == Z.Op.SubmitTask:
            wid = body.get("workflow_id") or f"{str(body.get('task_type')).lower()}-3f9a01bc"
            return {"workflow_id": wid, "run_id": "0" * 32, "started": True}
        if opcode == Z.Op.ScheduleRecurring:
            return {"schedule_id": body.get("name"), "created": True}
        if opcode == Z.Op.Health:
            return {"service": "tasks", "status": "ok", "node_id": "fake", "namespace": "default"}
        return {}


def workflow_task(
    token: str = "tt1.a.b",
    *,
    sub: str = "sub-1",
    workflow_type: str = "wf",
    input: Any = None,  # noqa: A002
    workflow_id: str = "wf-1",
    run_id: str = "f" * 32,
    task_queue: str = "tasks",
    namespace: str = "default",
    history: list[dict[str, Any]] | None = None,
    task_timeout_ms: int = 10_000,
    **extra: Any,
) -> dict[str, Any]:
    """A DeliverWorkflowTask (0xB0) body with every field of SPEC §8.5."""
    return {
        "task_token": token,
        "subscription_id": sub,
        "namespace": namespace,
        "workflow_id": workflow_id,
        "run_id": run_id,
        "workflow_type": workflow_type,
        "task_queue": task_queue,
        "input": input,
        "attempt": 1,
        "workflow_attempt": 1,
        "started_event_id": 3,
        "previous_started_event_id": 0,
        "full_history": True,
        "history_truncated": False,
        "history": history or [],
        "task_timeout_ms": task_timeout_ms,
        "cancel_requested": False,
        **extra,
    }
