"""The client: ``add`` (recurring), ``now`` (one-shot) and ``stop`` (SPEC §2).

One class serves two modes so that application code does not change between
a laptop and a cluster:

* **local** (no ``tasks_url``, no ``zap_addr``): everything runs in this
  process, nothing is persisted (``tasks._local``);
* **remote**: schedules and runs are durable on the server; ``add`` upserts a
  schedule and ``now`` starts a workflow, over ZAP when ``zap_addr`` is set
  (HTTP when ZAP cannot be reached and ``tasks_url`` is set), else over HTTP.
  The functions given to ``add`` (and the catch-all ``handler``) are run by
  the client's *embedded worker* (``tasks.worker.Worker``), which the durable
  schedules fire through.

TLS (docs/tls.md): an ``https://`` ``tasks_url`` and a ``zaps://host:port``
``zap_addr`` are verified against ``ca_file`` (or ``TASKS_CA_FILE``; default:
the system's CA store), and ``cert_file``/``key_file`` (``TASKS_CERT_FILE``,
``TASKS_KEY_FILE``) present a client certificate. The ZAP address discovered
from an ``https://`` server is reached over TLS too.

Remote calls are blocking for the caller: HTTP with the standard library in
the caller's thread, ZAP on the connection's own loop thread (``tasks.zap``),
so that importing ``tasks`` pulls in no server or aiohttp code; the ``a*``
variants run them in a thread for async callers.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import logging
import os
import re
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, Literal

from hanzo_tasks._local import Call, CronTiming, IntervalTiming, LocalEngine, Timing, wants_arg
from hanzo_tasks.args import zap_retry_policy
from hanzo_tasks.embedded_worker import EmbeddedWorker
from hanzo_tasks.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NoHandler,
    RateLimited,
    TasksError,
    Timeout,
    Unavailable,
    error_from,
)
from hanzo_tasks.handle import WorkflowHandle, start_workflow
from hanzo_tasks.protocol import hostport
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.names import is_id, is_namespace
from hanzo_tasks.protocol.schedule_spec import SpecError, classify, compile_cron
from hanzo_tasks.worker import Worker
from hanzo_tasks.zap import (
    CLIENT_CERT_HINT,
    ZAP_TLS_SCHEME,
    ConnectFailed,
    ZapConnection,
    split_host_port,
    split_zap_address,
    tls_problem,
)

__all__ = ["Client", "default", "set_default"]

log = logging.getLogger("tasks")

HTTP_TIMEOUT_S = 10.0
MAX_ATTEMPTS = 3  # in total, first try included (SPEC §2.4)
BACKOFF_S = (0.5, 1.0)  # waits before attempts 2 and 3 when there is no Retry-After
MAX_RETRY_AFTER_S = 5.0
MIN_REMOTE_INTERVAL_MS = 1000  # the server refuses faster schedules (SPEC §5.8)
SCHEDULE_ID_MAX_BYTES = 200  # so that "<scheduleId>-<nominal time>" fits an Id (SPEC §1)

_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_USER_AGENT = "hanzo-tasks-python/0.1"

Mode = Literal["local", "remote"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would replay a POST as a body-less GET."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _optional_text(value: object, what: str) -> str | None:
    """None and "" mean "not given"; anything else must be a string."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, not {type(value).__name__}")
    return value


def _check_url(tasks_url: object) -> str | None:
    url = _optional_text(tasks_url, "tasks_url")
    if url is None:
        return None
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as e:
        raise InvalidArgument(f"invalid tasks_url {url!r}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidArgument(f"tasks_url must be an http(s) URL, got {url!r}")
    if parts.query or parts.fragment:
        raise InvalidArgument(f"tasks_url must not have a query or fragment: {url!r}")
    return url.rstrip("/")


def _check_zap(zap_addr: object) -> str | None:
    addr = _optional_text(zap_addr, "zap_addr")
    if addr is None:
        return None
    try:
        split_zap_address(addr)
    except InvalidArgument:
        raise InvalidArgument(f"zap_addr must be host:port or zaps://host:port, got {addr!r}") from None
    return addr


def _tls_file(value: object, env: str, what: str) -> str | None:
    """A TLS file argument, else its environment variable (empty = unset)."""
    given = _optional_text(value, what)
    return given if given is not None else (os.environ.get(env) or None)


def _check_id(value: object, what: str, max_bytes: int = 255) -> str:
    if not is_id(value, max_bytes):
        raise InvalidArgument(
            f"invalid {what} {value!r}: 1-{max_bytes} bytes, no control characters, "
            "no '/', not '.' or '..'"
        )
    return value  # type: ignore[return-value]


def _retry_after(header: str | None) -> float | None:
    if not header:
        return None
    try:
        value = float(header.strip())
    except ValueError:
        return None  # an HTTP-date: rare enough to use the default back-off
    return value if value >= 0 else None


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _json_value(value: Any) -> Any:
    """``value`` as the JSON it travels as (tuples -> lists); InvalidArgument if not JSON."""
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"payload is not JSON: {e}") from None


def _fallback_worthy(err: TasksError) -> bool:
    """A failure of the service rather than of the request.

    Only these are served locally under ``fallback="local"``: a 4xx means the
    request itself is wrong (bad token, bad spec), and serving it locally would
    hide that bug instead of letting the caller fix it.
    """
    if isinstance(err, (Unavailable, RateLimited, Timeout)):
        return True
    return err.status is not None and err.status >= 500


class Client:
    """Schedules (``add``) and one-shot tasks (``now``), local or remote.

    Construction never does I/O, so a client can be built at import time of
    an application; invalid arguments fail here, not at the first call.
    Every method is thread-safe.
    """

    def __init__(
        self,
        tasks_url: str | None = None,
        zap_addr: str | None = None,
        handler: Callable[[str, Any], Any] | None = None,
        *,
        namespace: str = "default",
        task_queue: str = "tasks",
        auth_token: str | None = None,
        fallback: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
    ) -> None:
        self._tasks_url = _check_url(tasks_url)
        self._ca_file = _tls_file(ca_file, "TASKS_CA_FILE", "ca_file")
        self._cert_file = _tls_file(cert_file, "TASKS_CERT_FILE", "cert_file")
        self._key_file = _tls_file(key_file, "TASKS_KEY_FILE", "key_file")
        if bool(self._cert_file) != bool(self._key_file):
            raise InvalidArgument("cert_file and key_file are given together (a client certificate)")
        self._ssl: ssl.SSLContext | None = None
        self._zap_addr = _check_zap(zap_addr)
        if handler is not None and not callable(handler):
            raise InvalidArgument("handler must be callable")
        if not is_namespace(namespace):
            raise InvalidArgument(
                f"invalid namespace {namespace!r}: [A-Za-z0-9_.-]{{1,64}}, not '.' or '..'"
            )
        self._task_queue = _check_id(task_queue, "task queue")
        if auth_token is not None and not isinstance(auth_token, str):
            raise InvalidArgument("auth_token must be a string")
        if auth_token and any(c in auth_token for c in "\r\n"):
            raise InvalidArgument("auth_token must not contain line breaks")
        if fallback not in (None, "local"):
            raise InvalidArgument(f'fallback must be None or "local", got {fallback!r}')
        self._handler = handler
        self._namespace: str = namespace
        self._auth_token = auth_token or None
        self._fallback = fallback

        self._lock = threading.RLock()
        self._stopped = False
        self._stop_event = threading.Event()  # interrupts retry waits on stop()
        # name -> fn: the local runners' functions, and in remote mode the
        # registry the embedded worker subscribes with.
        self._fns: dict[str, Callable[..., Any]] = {}
        self._engine: LocalEngine | None = None
        self._opener: urllib.request.OpenerDirector | None = None
        # ZAP connections by address (tasks.zap), shared by calls and workers.
        # Normally one: zap_addr, or the server's zapAddr. Two only when zap_addr
        # is unreachable and the worker falls back to the advertised address.
        self._zaps: dict[str, ZapConnection] = {}
        self._discovered_zap: str | None = None
        self._embedded = EmbeddedWorker(self, self._task_queue)

    # -- properties ----------------------------------------------------------

    @property
    def mode(self) -> Mode:
        return "remote" if (self._tasks_url or self._zap_addr) else "local"

    @property
    def namespace(self) -> str:
        return self._namespace

    @property
    def task_queue(self) -> str:
        return self._task_queue

    @property
    def tasks_url(self) -> str | None:
        return self._tasks_url

    @property
    def zap_addr(self) -> str | None:
        return self._zap_addr

    @property
    def handler(self) -> Callable[[str, Any], Any] | None:
        return self._handler

    def __repr__(self) -> str:
        where = self._tasks_url or self._zap_addr or "local"
        return f"<tasks.Client {where} ns={self._namespace} tq={self._task_queue}>"

    # -- add -------------------------------------------------------------------

    def add(self, name: str, spec: str, fn: Callable[..., Any]) -> None:
        """Run ``fn`` on ``spec`` (a duration like ``"5m"`` or a cron) under ``name``.

        Adding a name again replaces its schedule. Remote: the schedule is
        durable and survives this process; local: it lives until ``stop()``.
        """
        _check_id(name, "schedule name", SCHEDULE_ID_MAX_BYTES)
        if not callable(fn):
            raise InvalidArgument(f'fn for "{name}" must be callable')
        text, kind, value = self._classify(name, spec)
        self._check_open()
        if self.mode == "local":
            self._add_local(name, kind, value, fn)
            return

        period = value if kind == "interval" else compile_cron(value).every_ms
        if period is not None and period < MIN_REMOTE_INTERVAL_MS:
            raise InvalidArgument(
                f'interval "{text}" for "{name}" is under 1s, the minimum for durable schedules'
            )
        with self._lock:
            self._check_open()
            previous = self._fns.get(name)
            self._fns[name] = fn  # the embedded worker runs fn
        schedule_spec = (
            {"interval": [{"interval": text}]} if kind == "interval" else {"cronString": [text]}
        )
        body = {
            "scheduleId": name,
            "spec": schedule_spec,
            "action": {
                "workflowType": {"name": name},
                "taskQueue": self._task_queue,
                "input": None,
            },
            "policies": {"overlapPolicy": "SCHEDULE_OVERLAP_POLICY_SKIP"},
        }
        zap_body = {
            "name": name,
            "spec": text,
            "task_queue": self._task_queue,
            "overlap_policy": "SKIP",
        }
        try:
            # The worker first: a durable schedule that fires into a queue nobody
            # serves would pile up runs; and its failure (no ZAP address) is a
            # service failure that fallback="local" may cover.
            self._ensure_embedded_worker()
            self._remote(Z.Op.ScheduleRecurring, zap_body, "schedules", body, {"upsert": "true"})
        except TasksError as e:
            if self._fallback == "local" and _fallback_worthy(e):
                log.warning("schedule %s: remote add failed (%s); running it locally", name, e)
                self._add_local(name, kind, value, fn)
                return
            with self._lock:
                if previous is None:
                    self._fns.pop(name, None)
                else:
                    self._fns[name] = previous
            self._sync_embedded_worker()
            raise
        with self._lock:
            # The durable schedule now owns this name: a local fallback runner
            # left from an earlier outage would make it fire twice.
            if self._engine is not None:
                self._engine.cancel_runner(name)

    def _classify(self, name: str, spec: object) -> tuple[str, str, Any]:
        """SPEC §2.2: (trimmed text, "interval" | "cron", ms | cron expression)."""
        if not isinstance(spec, str):
            raise InvalidArgument(f'schedule for "{name}" must be a string')
        text = spec.strip()
        if not text:
            raise InvalidArgument(f'empty schedule for "{name}"')
        try:
            kind, value = classify(text)
        except SpecError as e:
            # classify words its errors as SPEC §2.2 does ('"<spec>" is
            # neither a duration nor a cron expression: <reason>', or a
            # non-positive interval), so the message is passed on unchanged.
            raise InvalidArgument(str(e)) from None
        return text, kind, value

    def _add_local(self, name: str, kind: str, value: Any, fn: Callable[..., Any]) -> None:
        timing: Timing
        if kind == "interval":
            if value < 1:
                raise InvalidArgument(f'interval for "{name}" must be at least 1ms')
            timing = IntervalTiming(value)
        else:
            cron = compile_cron(value)
            every = cron.every_ms
            if every is not None:
                # "@every d" is the interval d aligned on the epoch. Cron.next_after
                # rounds to whole seconds (server nominal times); local mode keeps
                # the millisecond precision that sub-second intervals need.
                timing = CronTiming(lambda t: (t // every + 1) * every)
            else:
                timing = CronTiming(cron.next_after)
        call = Call(fn, (None,) if wants_arg(fn) else ())
        with self._lock:
            self._check_open()
            self._fns[name] = fn
            self._local_engine().set_runner(name, timing, call)

    # -- now -------------------------------------------------------------------

    def now(
        self,
        task_type: str,
        payload: Any = None,
        *,
        workflow_id: str | None = None,
        request_id: str | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> str:
        """Run ``task_type`` once with ``payload``; return its workflow id.

        Remote: a durable workflow (idempotent by ``request_id``). Local: runs
        in the background and returns ``local-<8 hex>`` at once.
        """
        _check_id(task_type, "task type")
        if workflow_id is not None:
            _check_id(workflow_id, "workflow id")
        if request_id is not None and not (
            isinstance(request_id, str) and _REQUEST_ID.fullmatch(request_id)
        ):
            raise InvalidArgument(f"invalid request id {request_id!r}")
        if retry_policy is not None and not isinstance(retry_policy, dict):
            raise InvalidArgument("retry_policy must be a dict")
        self._check_open()
        if self.mode == "local":
            return self._now_local(task_type, payload)

        rid = request_id or uuid.uuid4().hex
        body: dict[str, Any] = {
            "workflowType": {"name": task_type},
            "taskQueue": {"name": self._task_queue},
            "input": payload,
            "requestId": rid,
        }
        if workflow_id is not None:
            body["workflowId"] = workflow_id
        if retry_policy is not None:
            body["retryPolicy"] = retry_policy
        zap_body: dict[str, Any] | None = None
        if self._zap_addr is not None:
            zap_body = {
                "task_type": task_type,
                "payload": _json_value(payload),
                "task_queue": self._task_queue,
                "request_id": rid,
            }
            if workflow_id is not None:
                zap_body["workflow_id"] = workflow_id
            if retry_policy is not None:
                zap_body["retry_policy"] = zap_retry_policy(retry_policy)
        with self._lock:
            has_fn = task_type in self._fns
        try:
            if has_fn or self._handler is not None:
                self._ensure_embedded_worker()
            via, resp = self._remote(Z.Op.SubmitTask, zap_body, "workflows", body)
        except TasksError as e:
            if self._fallback == "local" and _fallback_worthy(e):
                log.warning("task %s: remote start failed (%s); running it locally", task_type, e)
                return self._now_local(task_type, payload)
            raise
        if via == "zap":
            wid = resp.get("workflow_id")
        else:
            execution = resp.get("execution")
            wid = execution.get("workflowId") if isinstance(execution, dict) else None
            wid = wid or resp.get("workflowId")
        if not isinstance(wid, str):
            raise Internal("start response carries no workflow id", details={"response": resp})
        return wid

    def _now_local(self, task_type: str, payload: Any) -> str:
        with self._lock:
            self._check_open()
            fn = self._fns.get(task_type)
            if fn is not None:
                call = Call(fn, (payload,) if wants_arg(fn) else ())
            elif self._handler is not None:
                call = Call(self._handler, (task_type, payload))
            else:
                raise NoHandler(f'no fn added for "{task_type}" and no handler')
            run_id = f"local-{secrets.token_hex(4)}"
            self._local_engine().submit(call, f"task {task_type} {run_id}")
        return run_id

    # -- workflows: start, handles, results ------------------------------------

    def start(
        self,
        wf: Any,
        arg: Any = None,
        *,
        id: str | None = None,  # noqa: A002 - the public keyword (Temporal's spelling)
        task_queue: str | None = None,
        request_id: str | None = None,
        id_conflict_policy: str | None = None,
        retry_policy: Any = None,
        execution_timeout: Any = None,
        run_timeout: Any = None,
        task_timeout: Any = None,
        memo: dict[str, Any] | None = None,
        search_attributes: dict[str, Any] | None = None,
    ) -> WorkflowHandle:
        """Start workflow ``wf`` (its type name, or a ``@workflow`` definition) with ``arg``.

        Returns a :class:`WorkflowHandle` to wait for its result and act on it.
        ``id`` defaults to one the server makes; ``task_queue`` to the client's.
        Timeouts are seconds, ``timedelta`` or duration strings. A run already
        open under ``id`` raises ``AlreadyStarted`` (unless ``id_conflict_policy``
        says otherwise). Remote clients only: nothing is durable locally.
        """
        self._check_remote("start")
        return start_workflow(
            self, wf, arg, id=id, task_queue=task_queue, request_id=request_id,
            id_conflict_policy=id_conflict_policy, retry_policy=retry_policy,
            execution_timeout=execution_timeout, run_timeout=run_timeout, task_timeout=task_timeout,
            memo=memo, search_attributes=search_attributes,
        )

    def execute(self, wf: Any, arg: Any = None, *, timeout: float | None = None, **start: Any) -> Any:
        """``start(wf, arg, **start).result(timeout)``: run a workflow and return its result."""
        return self.start(wf, arg, **start).result(timeout)

    def get_handle(self, workflow_id: str, run_id: str | None = None) -> WorkflowHandle:
        """A handle on a workflow started elsewhere (``now``, a schedule, ``tasksctl``).

        Without ``run_id`` it targets the workflow id's latest run.
        """
        self._check_remote("get_handle")
        return WorkflowHandle(self, workflow_id, run_id)

    def result(self, workflow_id: str, run_id: str | None = None, *, timeout: float | None = None) -> Any:
        """The result of workflow ``workflow_id`` (an id ``now`` returned), waiting for it.

        Raises ``WorkflowFailed`` and its kin as ``WorkflowHandle.result`` does.
        """
        return self.get_handle(workflow_id, run_id).result(timeout)

    async def astart(self, wf: Any, arg: Any = None, **start: Any) -> WorkflowHandle:
        """``start`` without blocking the caller's event loop."""
        return await asyncio.to_thread(functools.partial(self.start, wf, arg, **start))

    async def aexecute(self, wf: Any, arg: Any = None, *, timeout: float | None = None, **start: Any) -> Any:
        """``execute`` without blocking the caller's event loop."""
        handle = await self.astart(wf, arg, **start)
        return await handle.aresult(timeout)

    async def aresult(self, workflow_id: str, run_id: str | None = None, *,
                      timeout: float | None = None) -> Any:
        """``result`` without blocking the caller's event loop."""
        return await self.get_handle(workflow_id, run_id).aresult(timeout)

    def _check_remote(self, what: str) -> None:
        self._check_open()
        if self.mode != "remote":
            raise FailedPrecondition(
                f"{what} needs a server (tasks_url or zap_addr): local runs are not durable "
                "and have no results to wait for"
            )

    # -- stop ------------------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> None:
        """Stop local runners and background threads; durable schedules stay.

        Waits up to ``timeout`` seconds for runs in progress, then cancels
        what can be cancelled. Idempotent.
        """
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            self._stop_event.set()
            engine, self._engine = self._engine, None
        deadline = time.monotonic() + max(0.0, timeout)
        self._embedded.stop(timeout)  # waits for a worker start in progress
        with self._lock:
            zaps, self._zaps = list(self._zaps.values()), {}
        for zap in zaps:
            zap.close()
        if engine is not None:
            engine.close(max(0.0, deadline - time.monotonic()))

    def _check_open(self) -> None:
        if self._stopped:
            raise FailedPrecondition("client stopped")

    def _local_engine(self) -> LocalEngine:
        # Started lazily (callers hold the lock): a client that is only built,
        # or only used remotely, owns no threads.
        if self._engine is None:
            self._engine = LocalEngine()
        return self._engine

    def _ensure_embedded_worker(self) -> None:
        """Start the embedded worker that runs added fns and the handler (SPEC §2.4)."""
        self._check_open()
        self._embedded.ensure(self._fns_now)

    def _sync_embedded_worker(self) -> None:
        """After a failed ``add``: the running embedded worker forgets the name again."""
        self._embedded.sync(self._fns_now)

    def _fns_now(self) -> dict[str, Callable[..., Any]]:
        with self._lock:
            return dict(self._fns)

    @property
    def worker(self) -> Worker | None:
        """The embedded worker, once ``add``/``now`` started it (remote mode)."""
        return self._embedded.worker

    # -- ZAP ---------------------------------------------------------------------

    def _connection(self, addr: str) -> ZapConnection:
        """The client's ZAP connection to ``addr`` (built on first use; connects lazily)."""
        with self._lock:
            self._check_open()
            conn = self._zaps.get(addr)
            if conn is None:
                tls = self._ssl_context() if addr.startswith(ZAP_TLS_SCHEME) else None
                conn = ZapConnection(addr, namespace=self._namespace, auth_token=self._auth_token,
                                     ssl_context=tls)
                self._zaps[addr] = conn
            return conn

    def _worker_connection(self) -> ZapConnection:
        """The connection a worker uses (SPEC §2.4), connected.

        ``zap_addr`` first; when it cannot be reached and ``tasks_url`` is set,
        the ``zapAddr`` the server advertises. Neither reachable -> ``Unavailable``.
        """
        if self.mode != "remote":
            raise FailedPrecondition("workers need a remote client")
        if self._zap_addr is not None:
            conn = self._connection(self._zap_addr)
            try:
                conn.connect()
                return conn
            except ConnectFailed as e:
                if self._tasks_url is None:
                    raise
                first: ConnectFailed | None = e
        else:
            first = None
        addr = self._discover_zap_addr()
        if first is not None and addr == self._zap_addr:
            raise first
        conn = self._connection(addr)
        conn.connect()
        return conn

    def _zap_connections(self) -> list[ZapConnection]:
        with self._lock:
            return list(self._zaps.values())

    def _discover_zap_addr(self) -> str:
        """``zapAddr`` from ``GET /v1/tasks/settings`` (SPEC §5.14), cached once found.

        A wildcard host (``0.0.0.0:9999``, ``:9999``) is replaced by the host of
        ``tasks_url``: the server reports where it listens, not how to reach it.
        """
        with self._lock:
            if self._discovered_zap is not None:
                return self._discovered_zap
        if self._tasks_url is None:
            raise Unavailable("no ZAP address: give the client a zap_addr")
        url = f"{self._tasks_url}/v1/tasks/settings"
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if self._auth_token:
            headers["Authorization"] = f"Bearer {self._auth_token}"
        req = urllib.request.Request(url, headers=headers, method="GET")
        try:
            with self._http_opener().open(req, timeout=HTTP_TIMEOUT_S) as resp:
                settings = _json_or_none(resp.read())
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise Unavailable(
                f"no ZAP address: cannot read {url} ({e}); give the client a zap_addr"
            ) from None
        addr = settings.get("zapAddr") if isinstance(settings, dict) else None
        if not isinstance(addr, str) or not addr:
            raise Unavailable(f"no ZAP address: {url} reports no zapAddr (ZAP disabled?)")
        try:
            host, port = hostport.split_host_port(addr, empty_host=True)
            if host in hostport.WILDCARD_HOSTS:
                host = urllib.parse.urlsplit(self._tasks_url).hostname or "127.0.0.1"
                addr = hostport.join_host_port(host, port)
            split_host_port(addr)
        except (ValueError, InvalidArgument):
            raise Unavailable(
                f"no ZAP address: {url} reports an invalid zapAddr {addr!r}"
            ) from None
        if self._tasks_url.startswith("https://"):
            addr = ZAP_TLS_SCHEME + addr  # a server that serves HTTPS serves ZAP over TLS
        with self._lock:
            self._discovered_zap = addr
        return addr

    # -- HTTP ------------------------------------------------------------------

    def _remote(
        self,
        opcode: int,
        zap_body: dict[str, Any] | None,
        route: str,
        body: dict[str, Any] | None,
        query: dict[str, str] | None = None,
        *,
        method: str = "POST",
        timeout: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """One remote call with the retries of SPEC §2.4: ``("zap" | "http", answer)``.

        ZAP when ``zap_addr`` is set; HTTP ``<method> NS/<route>`` when it is
        not, or when the ZAP connection cannot be established and ``tasks_url``
        is set. Each attempt chooses again, so a ZAP server that comes back is
        used from the next call on. ``body`` None sends none (GET). ``timeout``
        bounds one attempt: long polls pass their wait plus a margin.
        """
        if timeout is None:
            timeout = HTTP_TIMEOUT_S  # read now: tests shorten it
        data: bytes | None = None
        if body is not None:
            try:
                data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
            except (TypeError, ValueError) as e:
                raise InvalidArgument(f"payload is not JSON: {e}") from None
        url = ""
        if self._tasks_url is not None:
            ns = urllib.parse.quote(self._namespace, safe="")
            url = f"{self._tasks_url}/v1/tasks/namespaces/{ns}/{route}"
            if query:
                url += "?" + urllib.parse.urlencode(query)
        attempt = 1
        while True:
            try:
                return self._remote_once(opcode, zap_body, url, data, method, timeout)
            except (Unavailable, RateLimited) as e:
                if attempt >= MAX_ATTEMPTS:
                    raise
                wait = (
                    min(e.retry_after, MAX_RETRY_AFTER_S)
                    if e.retry_after is not None
                    else BACKOFF_S[attempt - 1]
                )
                log.debug("%s: %s; retrying in %.2fs", route, e, wait)
                if self._stop_event.wait(wait):
                    raise  # stop() was called: give up now rather than later
                attempt += 1

    def _remote_once(
        self,
        opcode: int,
        zap_body: dict[str, Any] | None,
        url: str,
        data: bytes | None,
        method: str = "POST",
        timeout: float | None = None,
    ) -> tuple[str, dict[str, Any]]:
        timeout = HTTP_TIMEOUT_S if timeout is None else timeout
        if self._zap_addr is not None and zap_body is not None:
            try:
                answer = self._connection(self._zap_addr).call(opcode, zap_body, timeout)
                return "zap", answer if isinstance(answer, dict) else {}
            except ConnectFailed as e:
                if not url:
                    raise
                log.debug("ZAP unreachable (%s); using HTTP", e)
        if not url:
            raise Unavailable("no transport: the client has neither tasks_url nor zap_addr")
        return "http", self._http_once(url, data, method, timeout)

    def _ssl_context(self) -> ssl.SSLContext:
        """The context that verifies servers (and presents the client
        certificate), built on first use; a file that cannot be loaded is
        InvalidArgument naming it."""
        with self._lock:
            if self._ssl is None:
                try:
                    ctx = ssl.create_default_context(cafile=self._ca_file)
                except (OSError, ValueError) as e:
                    raise InvalidArgument(f"cannot load ca_file {self._ca_file}: {e}") from None
                if self._cert_file:
                    try:
                        ctx.load_cert_chain(self._cert_file, self._key_file)
                    except (OSError, ValueError) as e:
                        raise InvalidArgument(
                            f"cannot load cert_file {self._cert_file} / key_file {self._key_file}: {e}"
                        ) from None
                self._ssl = ctx
            return self._ssl

    def _http_opener(self) -> urllib.request.OpenerDirector:
        https = self._tasks_url is not None and self._tasks_url.startswith("https://")
        tls = self._ssl_context() if https else None
        with self._lock:
            if self._opener is None:
                handlers: list[Any] = [_NoRedirect]
                if tls is not None:
                    handlers.append(urllib.request.HTTPSHandler(context=tls))
                self._opener = urllib.request.build_opener(*handlers)
            return self._opener

    def _http_once(
        self, url: str, data: bytes | None, method: str = "POST", timeout: float | None = None
    ) -> dict[str, Any]:
        timeout = HTTP_TIMEOUT_S if timeout is None else timeout
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._auth_token:
            headers["Authorization"] = f"Bearer {self._auth_token}"
        req = urllib.request.Request(url, data=data, headers=headers, method=method)
        opener = self._http_opener()
        try:
            with opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            with e:
                try:
                    raw = e.read()
                except (OSError, http.client.HTTPException):
                    raw = b""
            raise error_from(
                e.code, _json_or_none(raw), retry_after=_retry_after(e.headers.get("Retry-After"))
            ) from None
        except urllib.error.URLError as e:
            # Nothing was answered (refused, DNS, TLS, connect timeout): the
            # server is unreachable, which SPEC §2.5 calls unavailable.
            problem = tls_problem(e.reason, self._tasks_url or url) if isinstance(e.reason, BaseException) else None
            raise Unavailable(problem or f"cannot reach {self._tasks_url}: {e.reason}") from None
        except TimeoutError:
            raise Timeout(f"no response from {self._tasks_url} within {timeout:g}s") from None
        except (OSError, http.client.HTTPException) as e:
            closed = isinstance(e, ConnectionResetError | http.client.RemoteDisconnected)
            hint = CLIENT_CERT_HINT if closed and url.startswith("https://") else ""
            raise Unavailable(f"connection to {self._tasks_url} failed: {e!r}{hint}") from None
        parsed = _json_or_none(raw)
        if not isinstance(parsed, dict):
            raise Internal(f"unexpected response from {url}: not a JSON object")
        return parsed

    # -- context managers and async variants ---------------------------------

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()

    async def aadd(self, name: str, spec: str, fn: Callable[..., Any]) -> None:
        """``add`` without blocking the caller's event loop."""
        await asyncio.to_thread(self.add, name, spec, fn)

    async def anow(
        self,
        task_type: str,
        payload: Any = None,
        *,
        workflow_id: str | None = None,
        request_id: str | None = None,
        retry_policy: dict[str, Any] | None = None,
    ) -> str:
        """``now`` without blocking the caller's event loop."""
        call = functools.partial(
            self.now,
            task_type,
            payload,
            workflow_id=workflow_id,
            request_id=request_id,
            retry_policy=retry_policy,
        )
        return await asyncio.to_thread(call)

    async def astop(self, timeout: float = 10.0) -> None:
        """``stop`` without blocking the caller's event loop."""
        engine = self._engine
        if (engine is not None and engine.in_engine_thread()) or any(
            z.in_loop_thread() for z in self._zap_connections()
        ):
            # Called from a coroutine fn on the client's own loop: stop() knows
            # not to wait for itself there, whereas a helper thread would.
            self.stop(timeout)
            return
        await asyncio.to_thread(self.stop, timeout)


# -- the process-wide default client (SPEC §2.1) ---------------------------------

_default_lock = threading.Lock()
_default_client: Client | None = None


def _env(name: str) -> str | None:
    return os.environ.get(name) or None  # an empty variable counts as unset


def default() -> Client:
    """The process-wide client, built from the environment on first use.

    Built under a lock so that concurrent first calls share one client (two
    would run every local schedule twice).
    """
    global _default_client
    client = _default_client
    if client is not None:
        return client
    with _default_lock:
        if _default_client is None:
            _default_client = Client(
                _env("TASKS_URL"),
                _env("TASKS_ZAP"),
                None,
                namespace=_env("TASKS_NAMESPACE") or "default",
                task_queue=_env("TASKS_TASK_QUEUE") or "tasks",
                auth_token=_env("TASKS_AUTH_TOKEN"),
            )
        return _default_client


def set_default(client: Client | None) -> None:
    """Install ``client`` as the default, or clear it with ``None``.

    The previous default is not stopped: whoever holds it may still use it.
    """
    global _default_client
    if client is not None and not isinstance(client, Client):
        raise InvalidArgument(f"set_default takes a Client or None, not {type(client).__name__}")
    with _default_lock:
        _default_client = client
