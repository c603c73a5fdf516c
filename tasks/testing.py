"""``hanzo_tasks.testing``: a real single node inside a test, with a clock the test drives.

Tests of workflows, schedules and the HTTP or ZAP API need a server, but not a
``tasksd`` process: starting one costs a second of imports and readiness
polling, and a test that waits for a timer sleeps real time. ``TestNode`` is
the same server (``hanzo_tasks.cluster.node.Node`` on a ``LocalReplicator``,
real LMDB in a temporary directory, a real HTTP socket and, unless turned off,
a real ZAP listener) running on a background thread of this process, with a
:class:`FakeClock` as its wall clock::

    from hanzo_tasks.testing import TestNode

    def test_report_runs_hourly():
        with TestNode() as node:
            client = node.client()
            client.add("report", "1h", "Report")     # a schedule on the server
            node.clock.advance(3600)                 # an hour passes, at once
            node.wait_until(lambda: fired(node) == 1)

(``async with TestNode() as node:`` works the same inside an async test.)

Why a clock object and not patched time: the node already takes its wall
clock as a parameter (``Node(clock=...)``); every proposal is stamped with it,
and the schedule and run timers compare due times against it. Advancing the
clock wakes the schedule timers and the dispatcher at once, so a timer due in
an hour fires as soon as the test says the hour has passed. The run-timeout
scan looks every 0.25 s of real time, so a deadline may take that long to be
seen. Nothing else about the server is faked.

Importing this module loads no server code: the server is imported when a
node starts, so ``import hanzo_tasks`` (and this module) stays light.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from hanzo_tasks.client import Client

if TYPE_CHECKING:
    from hanzo_tasks.cluster.embedded import EmbeddedNode

__all__ = ["FakeClock", "TestNode", "wait_until"]


def wait_until(pred: Callable[[], Any], timeout: float = 10.0, what: str = "the condition",
               every: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy and return that; fail after ``timeout`` s.

    Replicated state is applied asynchronously: a test polls for it, bounded,
    instead of sleeping a guessed amount.
    """
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if got:
            return got
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


# Built once: from Python 3.13 an opener loads the system's CA certificates when it is built
# (about 15 ms of CPU), which a test polling a node would otherwise pay on every call.
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_call(
    base_url: str, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
    headers: dict[str, str] | None = None, timeout: float = 10.0,
) -> tuple[int, Any, dict[str, str]]:
    """One HTTP call to a node: ``(status, body, headers)``, the body parsed when it
    is JSON (else text). Error statuses are answers here, not exceptions, and no
    proxy is ever used (a test's node is on loopback)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(base_url + path, data=data, method=method, headers=headers or {})
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            status, payload, hdrs = resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as e:
        status, payload, hdrs = e.code, e.read(), dict(e.headers)
    try:
        parsed = json.loads(payload) if payload else None
    except ValueError:
        parsed = payload.decode(errors="replace")
    return status, parsed, hdrs


class NodeHttp:
    """``request`` / ``get`` / ``post`` against ``self.url``: what a test calls on a node,
    whether it runs in this process (:class:`TestNode`) or as a ``tasksd`` process."""

    url: str

    def request(
        self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        headers: dict[str, str] | None = None, timeout: float = 10.0,
    ) -> tuple[int, Any, dict[str, str]]:
        """One HTTP call: ``(status, body, headers)``; the body is parsed JSON when it is JSON."""
        return http_call(self.url, method, path, body, raw=raw, headers=headers, timeout=timeout)

    def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        s, b, _ = self.request("GET", path, **kw)
        return s, b

    def post(self, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        s, b, _ = self.request("POST", path, body, **kw)
        return s, b


class FakeClock:
    """A wall clock in epoch milliseconds (what ``Node(clock=...)`` calls) that a test moves.

    Frozen by default: it reads ``start_ms`` (the real time when made) plus
    whatever ``advance`` added, so nothing is due until the test says so.
    ``ticking=True`` also lets real time flow: for suites written against a
    real clock (retry back-offs, throttles) that only want to skip long waits.
    Thread-safe: the node reads it on its own thread.
    """

    def __init__(self, start_ms: int | None = None, *, ticking: bool = False) -> None:
        # Seconds as a float: a ticking clock then reads what time.time() reads, to the
        # millisecond (tests compare the node's timestamps with the real clock).
        # A frozen clock starts at today's midnight (UTC), a round instant: interval
        # schedules are aligned to the epoch, so "1h" is then due exactly one
        # advance(3600) later, as a test reads it.
        if start_ms is not None:
            self._start_s = start_ms / 1000.0
        elif ticking:
            self._start_s = time.time()
        else:
            self._start_s = float(int(time.time()) // 86400 * 86400)
        self._ticking = ticking
        self._began = time.monotonic()
        self._offset_ms = 0
        self._lock = threading.Lock()
        self._listeners: list[Callable[[], None]] = []

    @property
    def ticking(self) -> bool:
        return self._ticking

    def __call__(self) -> int:
        with self._lock:
            offset = self._offset_ms
        now = self._start_s + (time.monotonic() - self._began if self._ticking else 0.0)
        return int(now * 1000) + offset

    def time(self) -> float:
        """The clock in seconds since the epoch (what ``time.time()`` is to the real clock)."""
        return self() / 1000.0

    def advance(self, seconds: float) -> int:
        """Move the clock ``seconds`` forward, wake what waits on it; return the new time (ms)."""
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        with self._lock:
            self._offset_ms += round(seconds * 1000)
            listeners = list(self._listeners)
        for wake in listeners:
            wake()
        return self()

    def advance_to(self, epoch_ms: int) -> int:
        """Move the clock to ``epoch_ms`` (if that is ahead of it); return the new time (ms)."""
        ahead = epoch_ms - self()
        return self.advance(ahead / 1000.0) if ahead > 0 else self()

    def on_advance(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Call ``wake()`` after every advance (from the advancing thread); returns an unsubscribe."""
        with self._lock:
            self._listeners.append(wake)

        def unsubscribe() -> None:
            with self._lock:
                if wake in self._listeners:
                    self._listeners.remove(wake)

        return unsubscribe


class TestNode(NodeHttp):
    """One real node in this process: ``with TestNode() as node:`` (or ``async with``).

    ``url`` is its HTTP base URL, ``zap_addr`` its ZAP ``host:port`` (None with
    ``zap=False``), ``clock`` its :class:`FakeClock`, ``client()`` a
    ``hanzo_tasks.Client`` of it, and ``get``/``post``/``request`` raw HTTP
    calls that return ``(status, parsed JSON body[, headers])`` and never raise
    on an error status. ``config`` takes the keys of ``tasks.embed(config=)``;
    ``args`` takes ``tasksd serve`` flags instead (e.g. ``["--limits-max-batch-size", "50"]``).
    The data lives in ``data_dir`` or, by default, a temporary directory that
    ``stop()`` removes.
    """

    __test__ = False  # a class named Test*: not a pytest test class

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        clock: FakeClock | None = None,
        zap: bool = True,
        namespace: str = "default",
        node_id: str = "test",
        config: Mapping[str, Any] | None = None,
        args: Sequence[str] = (),
    ) -> None:
        if config and args:
            raise ValueError("give config or args, not both")
        self.clock = clock if clock is not None else FakeClock()
        self.namespace = namespace
        self.node_id = node_id
        self._zap = zap
        self._config = dict(config or {})
        self._args = list(args)
        self._temp_dir: str | None = None
        self._given_dir = Path(data_dir) if data_dir is not None else None
        self.data_dir: Path | None = self._given_dir
        self.node: Any = None  # hanzo_tasks.cluster.node.Node, while running
        self.url = ""
        self.zap_addr: str | None = None
        self._running: EmbeddedNode | None = None
        self._clients: list[Client] = []
        self._unsubscribe: Callable[[], None] | None = None

    # ---- lifecycle -----------------------------------------------------------

    def _build_config(self, data_dir: Path) -> Any:
        from hanzo_tasks.cluster.config import config_from_mapping, load_config

        if self._args:
            argv = [*self._args, "--http", "127.0.0.1:0", "--data-dir", str(data_dir),
                    "--node-id", self.node_id, "--default-namespace", self.namespace]
            if self._zap:
                argv += ["--zap", "127.0.0.1:0"]
            return load_config(argv, env={})
        values: dict[str, Any] = dict(self._config)
        values.setdefault("data_dir", str(data_dir))
        values.setdefault("http", "127.0.0.1:0")
        if self._zap:
            values.setdefault("zap", "127.0.0.1:0")
        values.setdefault("default_namespace", self.namespace)
        values.setdefault("node_id", self.node_id)
        return config_from_mapping(values)

    def start(self, timeout: float = 60.0) -> TestNode:
        """Start the node on its own event-loop thread; returns once it serves."""
        if self.node is not None:
            raise RuntimeError("this TestNode is already running")
        from hanzo_tasks.cluster.embedded import (
            run_on_thread,  # lazy: server code only when a node starts
        )
        from hanzo_tasks.cluster.node import Node

        if self._given_dir is None:
            self._temp_dir = tempfile.mkdtemp(prefix="tasks-test-")
            self.data_dir = Path(self._temp_dir)
        assert self.data_dir is not None
        try:
            cfg = self._build_config(self.data_dir)
            node = Node(cfg, clock=self.clock)
            node.zap_enabled = self._zap
            running = run_on_thread(node, f"tasks-test-{self.node_id}", timeout)
        except BaseException:
            self._remove_temp_dir()
            raise
        self.node, self._running = node, running
        self.url = node.http_url or ""
        self.zap_addr = node.zap_addr
        self._unsubscribe = self.clock.on_advance(self._wake)
        return self

    def stop(self) -> None:
        """Stop the clients made here, then the node; remove a temporary data dir. Idempotent."""
        node, running = self.node, self._running
        if node is None or running is None:
            self._remove_temp_dir()
            return
        self.node = self._running = None
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        clients, self._clients = self._clients, []
        try:
            for c in clients:
                c.stop()
            running.stop()
        finally:
            self._remove_temp_dir()

    def _remove_temp_dir(self) -> None:
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None

    def __enter__(self) -> TestNode:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    async def __aenter__(self) -> TestNode:
        # The node has its own loop thread (so sync helpers never block the
        # caller's loop); starting and stopping it are blocking, so off-loop.
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.stop)

    @property
    def alive(self) -> bool:
        """Running, its loop thread up, and not failed (what "the process has not exited" is to tasksd)."""
        node, running = self.node, self._running
        return (node is not None and running is not None and running.thread.is_alive()
                and node.failure is None and node.fatal is None)

    # ---- the clock -----------------------------------------------------------

    def _wake(self) -> None:
        """The clock moved: the schedule timers and the dispatcher look again now.

        Both wait on an ``asyncio.Event`` with a timeout computed from the
        clock; setting it (on the node's loop) makes them recompute what is due.
        """
        node, running = self.node, self._running
        if node is None or running is None or running.loop.is_closed():
            return
        loop = running.loop

        def wake() -> None:
            for part in (node.timers, node.dispatcher):
                if part is not None:
                    part.wake()

        try:
            loop.call_soon_threadsafe(wake)
        except RuntimeError:  # the loop closed meanwhile
            pass

    def wait_until(self, pred: Callable[[], Any], timeout: float = 10.0,
                   what: str = "the condition") -> Any:
        """Poll ``pred`` (bounded) until it is truthy: for state the node applies asynchronously."""
        return wait_until(pred, timeout, what)

    # ---- clients -------------------------------------------------------------

    @property
    def zap_address(self) -> tuple[str, int] | None:
        """``zap_addr`` as ``(host, port)``, for a raw socket."""
        if self.zap_addr is None:
            return None
        host, _, port = self.zap_addr.rpartition(":")
        return host.strip("[]"), int(port)

    def client(self, **kw: Any) -> Client:
        """A ``hanzo_tasks.Client`` of this node (its namespace unless ``namespace=``); stopped with it."""
        if self.node is None:
            raise RuntimeError("the TestNode is not running")
        kw.setdefault("namespace", self.namespace)
        kw.setdefault("zap_addr", self.zap_addr)
        c = Client(self.url, **kw)
        self._clients.append(c)
        return c

    def __repr__(self) -> str:
        state = f"http={self.url} zap={self.zap_addr}" if self.node is not None else "stopped"
        return f"<TestNode {self.node_id} {state}>"
