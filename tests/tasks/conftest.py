"""Shared fixtures for the client library tests.

Timing-based tests use short intervals but generous, bounded waits
(``wait_until``): they assert on counts and order, never on exact timing.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import hanzo_tasks as tasks
import pytest
from aiohttp import web
from hanzo_tasks import client as client_mod

from .zapfake import FakeZap


def wait_until(pred: Callable[[], bool], timeout: float = 3.0, step: float = 0.005) -> bool:
    """Poll ``pred`` until it is true or ``timeout`` passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


class Counter:
    """A thread-safe call recorder usable as a schedule fn."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[float, tuple[Any, ...]]] = []

    def __call__(self, *args: Any) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), args))

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.calls)


@pytest.fixture
def local() -> Iterator[tasks.Client]:
    c = tasks.Client()
    try:
        yield c
    finally:
        c.stop(timeout=0.5)


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    # urllib honours proxy variables; the fake server is on loopback.
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shrink the default 0.5 s / 1 s retry waits so retry tests stay fast."""
    monkeypatch.setattr(client_mod, "BACKOFF_S", (0.01, 0.02))


@dataclass
class Reply:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any


class FakeServer:
    """A tiny real HTTP server faking the routes the client uses.

    It records every POST, and answers from ``script`` (one ``Reply`` per
    request, in order) before falling back to a plausible success.
    ``GET /v1/tasks/settings`` reports ``zap`` (a :class:`FakeZap`) as the
    server's ``zapAddr``: the embedded worker that ``add`` starts finds its
    ZAP address there (SPEC §2.4).
    """

    def __init__(self) -> None:
        self.zap = FakeZap()
        self.settings_hits = 0
        self.requests: list[Recorded] = []
        self.script: list[Reply] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None
        self.url = ""

    def start(self) -> None:
        self.zap.start()
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self.zap.stop()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/tasks/settings", self._settings)
        app.router.add_post("/v1/tasks/namespaces/{ns}/workflows", self._workflows)
        app.router.add_post("/v1/tasks/namespaces/{ns}/schedules", self._schedules)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def _record(self, request: web.Request) -> tuple[Any, Reply | None]:
        body = await request.json()
        with self._lock:
            self.requests.append(
                Recorded(
                    request.method, request.path, dict(request.query), dict(request.headers), body
                )
            )
            reply = self.script.pop(0) if self.script else None
        if reply is not None and reply.delay:
            await asyncio.sleep(reply.delay)
        return body, reply

    @staticmethod
    def _respond(reply: Reply) -> web.Response:
        return web.json_response(reply.body, status=reply.status, headers=reply.headers)

    async def _workflows(self, request: web.Request) -> web.Response:
        body, reply = await self._record(request)
        if reply is not None:
            return self._respond(reply)
        wid = body.get("workflowId") or f"{body['workflowType']['name'].lower()}-3f9a01bc"
        return web.json_response(
            {
                "execution": {"workflowId": wid, "runId": "0" * 32},
                "type": body["workflowType"],
                "taskQueue": body["taskQueue"]["name"],
                "status": "WORKFLOW_EXECUTION_STATUS_RUNNING",
                "started": True,
            }
        )

    async def _settings(self, request: web.Request) -> web.Response:
        self.settings_hits += 1
        return web.json_response({"version": "0", "nodeId": "fake", "zapAddr": self.zap.addr})

    async def _schedules(self, request: web.Request) -> web.Response:
        body, reply = await self._record(request)
        if reply is not None:
            return self._respond(reply)
        return web.json_response({**body, "namespace": request.match_info["ns"]})


@pytest.fixture
def server() -> Iterator[FakeServer]:
    s = FakeServer()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def dead_url() -> str:
    """A loopback URL on which nothing listens (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"
