"""Workflow handles: start a workflow, wait for its result, act on its run (SPEC §5.6, §8.4).

``client.start(...)`` returns a :class:`WorkflowHandle`; ``client.get_handle(id)``
builds one for a workflow started elsewhere (``client.now``, a schedule,
``tasksctl``). A handle is only a name: it holds the workflow id and the run
ids it was made with, never a connection, so it is cheap, thread-safe and
usable from any thread.

Why results are a long poll in rounds: the server answers
``GET NS/workflows/{id}/result`` (ZAP 0x006C) as soon as the run closes, or
with RUNNING once its ``wait`` (at most 60 s) passes; ``result(timeout=)``
asks again until its own timeout, so a workflow that runs for a day costs one
request a minute and its result arrives the moment it exists.

The calls go over the client's transport (ZAP when it has ``zap_addr``, else
HTTP) with its retries (SPEC §2.4); both transports' answers are turned into
one shape here, the HTTP one (camelCase), so callers see no difference.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import functools
import json
import re
import time
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from hanzo_tasks.args import duration_ms, zap_retry_policy
from hanzo_tasks.errors import (
    Internal,
    InvalidArgument,
    RateLimited,
    Timeout,
    Unavailable,
    WorkflowContinuedAsNew,
    workflow_error,
)
from hanzo_tasks.protocol import wire
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.durations import format_duration
from hanzo_tasks.protocol.names import is_id

if TYPE_CHECKING:
    from hanzo_tasks.client import Client

__all__ = ["WorkflowHandle", "workflow_name"]

STATUS_PREFIX = "WORKFLOW_EXECUTION_STATUS_"
OPEN = frozenset({"RUNNING", "CANCELING"})
ROUND_S = 60.0
"""The longest wait one result request asks the server for (its maximum, SPEC §5.6)."""
ROUND_MARGIN_S = 10.0
"""Added to a round's wait for the transport's own timeout: the answer comes at ``wait`` at the latest."""
FAILED_ROUNDS = 5
"""Rounds in a row that may fail as unavailable (a node restarting, its waiters released)
before ``result()`` gives up; each round already made the client's 3 attempts."""
HISTORY_PAGE = 1000
_RUN_ID = re.compile(r"[0-9a-f]{32}")


def json_value(value: Any, what: str = "payload") -> Any:
    """``value`` as the JSON it travels as (tuples -> lists); InvalidArgument if it is not JSON.

    Checked here for both transports: msgpack (ZAP) would carry bytes or NaN that HTTP could not.
    """
    try:
        return json.loads(json.dumps(value, allow_nan=False))
    except (TypeError, ValueError) as e:
        raise InvalidArgument(f"{what} is not JSON: {e}") from None


def workflow_name(wf: Any) -> str:
    """The workflow type name of ``wf``: a string as it is, a ``@workflow`` definition by the
    name it was declared with (``wf.__tasks_workflow__.name``), a plain function by its ``__name__``."""
    if isinstance(wf, str):
        name: Any = wf
    else:
        meta = getattr(wf, "__tasks_workflow__", None)
        name = getattr(meta, "name", None) if meta is not None else None
        if not isinstance(name, str):
            name = getattr(wf, "__name__", None)
    if not isinstance(name, str) or not is_id(name):
        raise InvalidArgument(f"not a workflow type: {wf!r} (give its name, or a @workflow definition)")
    return name


def _check_workflow_id(value: Any) -> str:
    if not is_id(value):
        raise InvalidArgument(f"invalid workflow id {value!r}")
    return value  # type: ignore[no-any-return]


def _check_run_id(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _RUN_ID.fullmatch(value):
        raise InvalidArgument(f"invalid run id {value!r}: 32 lowercase hex characters")
    return value  # type: ignore[no-any-return]


def _bare(status: Any) -> str:
    return str(status or "").removeprefix(STATUS_PREFIX)


def _path(workflow_id: str, *rest: str) -> str:
    return "/".join(("workflows", urllib.parse.quote(workflow_id, safe=""), *rest))


def _run_query(run_id: str | None) -> dict[str, str] | None:
    return {"runId": run_id} if run_id else None


def retry_policy_forms(policy: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A retry policy (a dict in either spelling, or a RetryPolicy-like dataclass with
    ``initial_interval``/``maximum_interval`` as timedeltas) -> (HTTP form, ZAP form)."""
    if dataclasses.is_dataclass(policy) and not isinstance(policy, type):
        raw = {k: v for k, v in dataclasses.asdict(policy).items() if v is not None}
        for key in ("initial_interval", "maximum_interval"):
            if key in raw:
                raw[key + "_ms"] = raw.pop(key)
        policy = raw
    if not isinstance(policy, dict):
        raise InvalidArgument("retry_policy must be a dict or a RetryPolicy")
    zap = zap_retry_policy(policy)
    for f in wire.RETRY_POLICY:  # a timedelta or seconds under a *_ms name: to milliseconds
        v = zap.get(f.snake)
        if f.duration and v is not None and not isinstance(v, int):
            zap[f.snake] = duration_ms(v, f"retry_policy.{f.camel}")
    if isinstance(zap.get("non_retryable_error_types"), tuple):
        zap["non_retryable_error_types"] = list(zap["non_retryable_error_types"])
    http = wire.to_http(zap, wire.RETRY_POLICY, lambda ms, f: format_duration(int(ms)))
    return http, zap


def start_workflow(
    client: Client,
    wf: Any,
    arg: Any,
    *,
    id: str | None,  # noqa: A002 - the public keyword, as in client.start(wf, arg, id=...)
    task_queue: str | None,
    request_id: str | None,
    id_conflict_policy: str | None,
    retry_policy: Any,
    execution_timeout: Any,
    run_timeout: Any,
    task_timeout: Any,
    memo: dict[str, Any] | None,
    search_attributes: dict[str, Any] | None,
) -> WorkflowHandle:
    """StartWorkflow (ZAP 0x0060 / ``POST NS/workflows``) -> a handle on the started run."""
    name = workflow_name(wf)
    wid = _check_workflow_id(id) if id is not None else None
    queue = task_queue if task_queue is not None else client.task_queue
    if not is_id(queue):
        raise InvalidArgument(f"invalid task queue {queue!r}")
    arg = json_value(arg, "arg")
    body: dict[str, Any] = {"workflowType": {"name": name}, "taskQueue": {"name": queue}, "input": arg}
    zap: dict[str, Any] = {"workflow_type": name, "task_queue": queue, "input": arg}
    if wid is not None:
        body["workflowId"] = zap["workflow_id"] = wid
    if request_id is not None:
        if not isinstance(request_id, str):
            raise InvalidArgument("request_id must be a string")
        body["requestId"] = zap["request_id"] = request_id
    if id_conflict_policy is not None:
        body["workflowIdConflictPolicy"] = zap["id_conflict_policy"] = id_conflict_policy
    for value, camel, snake, what in (
        (execution_timeout, "workflowExecutionTimeout", "execution_timeout_ms", "execution_timeout"),
        (run_timeout, "workflowRunTimeout", "run_timeout_ms", "run_timeout"),
        (task_timeout, "workflowTaskTimeout", "task_timeout_ms", "task_timeout"),
    ):
        ms = duration_ms(value, what)
        if ms is not None:
            body[camel] = format_duration(ms)
            zap[snake] = ms
    if retry_policy is not None:
        body["retryPolicy"], zap["retry_policy"] = retry_policy_forms(retry_policy)
    if memo is not None:
        body["memo"] = zap["memo"] = memo
    if search_attributes is not None:
        body["searchAttributes"] = zap["search_attributes"] = search_attributes
    via, resp = client._remote(Z.Op.StartWorkflow, zap, "workflows", body)
    if via == "zap":
        wid_out, rid = resp.get("workflow_id"), resp.get("run_id")
    else:
        execution = resp.get("execution")
        if not isinstance(execution, dict):
            execution = {}
        wid_out, rid = execution.get("workflowId"), execution.get("runId")
    if not isinstance(wid_out, str) or not isinstance(rid, str):
        raise Internal("start response carries no workflow or run id", details={"response": resp})
    return WorkflowHandle(client, wid_out, result_run_id=rid, first_run_id=rid)


class WorkflowHandle:
    """One workflow id (and maybe one run of it) to wait on and act on.

    ``run_id`` is the run that ``signal``/``query``/``cancel``/``terminate``/
    ``describe``/``history`` target; None targets the latest run (what a
    handle from ``client.start`` does, so that signals reach the run a
    ContinueAsNew started). ``result()`` starts from ``result_run_id`` (the
    started run, for a handle from ``start``; else ``run_id``; else the latest
    run) and follows ContinueAsNew to the final run.
    """

    def __init__(self, client: Client, workflow_id: str, run_id: str | None = None, *,
                 result_run_id: str | None = None, first_run_id: str | None = None) -> None:
        self._client = client
        self.workflow_id: str = _check_workflow_id(workflow_id)
        self.run_id: str | None = _check_run_id(run_id)
        self.result_run_id: str | None = _check_run_id(result_run_id) or self.run_id
        self.first_run_id: str | None = _check_run_id(first_run_id)

    def __repr__(self) -> str:
        run = self.run_id or self.result_run_id or "latest"
        return f"<WorkflowHandle {self.workflow_id} run={run}>"

    # -- result ------------------------------------------------------------------

    def result(self, timeout: float | datetime.timedelta | None = None, *, follow: bool = True) -> Any:
        """Wait for the run to close and return its result (a JSON value).

        Raises ``WorkflowFailed`` (or ``WorkflowCanceled`` / ``WorkflowTerminated``
        / ``WorkflowTimedOut``) with the run's failure when it did not complete,
        and ``Timeout`` when ``timeout`` seconds pass first (None waits as long as
        it takes). With ``follow`` (the default) a ContinueAsNew is followed to
        the new run; without it, ``WorkflowContinuedAsNew`` is raised instead.
        """
        if isinstance(timeout, datetime.timedelta):
            timeout = timeout.total_seconds()
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                    or timeout < 0):
            raise InvalidArgument("timeout must be a non-negative number of seconds or a timedelta")
        deadline = None if timeout is None else time.monotonic() + timeout
        rid = self.result_run_id
        failed_rounds = 0
        while True:
            left = ROUND_S if deadline is None else max(0.0, deadline - time.monotonic())
            wait_ms = int(min(ROUND_S, left) * 1000)
            try:
                answer = self._result_round(rid, wait_ms, follow)
            except (Unavailable, RateLimited) as e:
                failed_rounds += 1
                pause = min(e.retry_after or 1.0, 5.0)
                if failed_rounds >= FAILED_ROUNDS or (deadline is not None
                                                       and time.monotonic() + pause >= deadline):
                    raise
                time.sleep(pause)
                continue
            failed_rounds = 0
            status = _bare(answer.get("status"))
            run = answer.get("runId") or rid or ""
            if status in OPEN:
                rid = run or rid  # wait for that run from now on, not one started later
                if deadline is not None and time.monotonic() >= deadline:
                    raise Timeout(f"workflow {self.workflow_id} is still running after {timeout:g}s",
                                  details={"workflowId": self.workflow_id, "runId": rid or ""})
                continue
            if status == "COMPLETED":
                return answer.get("result")
            if status == "CONTINUED_AS_NEW":
                raise WorkflowContinuedAsNew(
                    f"workflow {self.workflow_id} run {run} continued as new",
                    details={"workflowId": self.workflow_id, "runId": run,
                             "nextRunId": answer.get("nextRunId") or ""})
            raise workflow_error(self.workflow_id, run, status, answer.get("failure"))

    def _result_round(self, run_id: str | None, wait_ms: int, follow: bool) -> dict[str, Any]:
        """One long poll: ``{status, runId, result?, failure?, nextRunId?}`` (HTTP spelling)."""
        zap: dict[str, Any] = {"workflow_id": self.workflow_id, "wait_ms": wait_ms, "follow": follow}
        query = {"wait": format_duration(wait_ms), "follow": "true" if follow else "false"}
        if run_id:
            zap["run_id"] = query["runId"] = run_id
        via, resp = self._client._remote(
            Z.Op.GetWorkflowResult, zap, _path(self.workflow_id, "result"), None, query,
            method="GET", timeout=wait_ms / 1000.0 + ROUND_MARGIN_S,
        )
        if via == "zap":
            resp = dict(resp)
            resp["runId"] = resp.pop("run_id", "")
            if "next_run_id" in resp:
                resp["nextRunId"] = resp.pop("next_run_id")
        return resp

    # -- acting on the run ---------------------------------------------------------

    def signal(self, name: str, arg: Any = None, *, request_id: str | None = None) -> None:
        """Send signal ``name`` with ``arg`` to the run (it must be open)."""
        if not is_id(name):
            raise InvalidArgument(f"invalid signal name {name!r}")
        arg = json_value(arg, "signal arg")
        body: dict[str, Any] = {"name": name, "payload": arg}
        zap: dict[str, Any] = {"workflow_id": self.workflow_id, "signal_name": name, "input": arg}
        if request_id is not None:
            body["requestId"] = zap["request_id"] = request_id
        if self.run_id:
            zap["run_id"] = self.run_id
        self._client._remote(Z.Op.SignalWorkflow, zap, _path(self.workflow_id, "signal"), body,
                             _run_query(self.run_id))

    def query(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        """Ask the worker holding the run for query ``name`` with ``args``; return its answer."""
        if not is_id(name):
            raise InvalidArgument(f"invalid query name {name!r}")
        args = tuple(json_value(list(args), "query args"))
        body: dict[str, Any] = {"queryType": name, "args": list(args)}
        zap: dict[str, Any] = {"workflow_id": self.workflow_id, "query_type": name, "args": list(args)}
        if timeout is not None:
            ms = duration_ms(timeout, "timeout")
            assert ms is not None
            body["timeout"], zap["timeout_ms"] = format_duration(ms), ms
            transport_s = ms / 1000.0 + ROUND_MARGIN_S
        else:
            transport_s = 5.0 + ROUND_MARGIN_S  # the server's default query timeout, and a margin
        if self.run_id:
            zap["run_id"] = self.run_id
        via, resp = self._client._remote(Z.Op.QueryWorkflow, zap, _path(self.workflow_id, "query"), body,
                                         _run_query(self.run_id), timeout=transport_s)
        return resp.get("result") if via == "zap" else resp.get("queryResult")

    def cancel(self, reason: str | None = None) -> None:
        """Request cancellation: the workflow's code sees it and may clean up before it closes."""
        self._close_op(Z.Op.CancelWorkflow, "cancel", reason)

    def terminate(self, reason: str | None = None) -> None:
        """Close the run at once as TERMINATED; its code gets no say."""
        self._close_op(Z.Op.TerminateWorkflow, "terminate", reason)

    def _close_op(self, opcode: int, route: str, reason: str | None) -> None:
        if reason is not None and not isinstance(reason, str):
            raise InvalidArgument("reason must be a string")
        body: dict[str, Any] = {"reason": reason} if reason else {}
        zap: dict[str, Any] = {"workflow_id": self.workflow_id, **body}
        if self.run_id:
            zap["run_id"] = self.run_id
        self._client._remote(opcode, zap, _path(self.workflow_id, route), body, _run_query(self.run_id))

    def describe(self) -> dict[str, Any]:
        """The run as ``GET NS/workflows/{id}`` shows it: ``{workflowExecutionInfo,
        executionConfig, pendingActivities, pendingWorkflowTask?}``."""
        zap: dict[str, Any] = {"workflow_id": self.workflow_id}
        if self.run_id:
            zap["run_id"] = self.run_id
        via, resp = self._client._remote(Z.Op.DescribeWorkflow, zap, _path(self.workflow_id), None,
                                         _run_query(self.run_id), method="GET")
        if via != "zap":
            return resp
        out = {"workflowExecutionInfo": resp.get("execution"), "executionConfig": resp.get("execution_config"),
               "pendingActivities": resp.get("pending_activities") or []}
        if resp.get("pending_workflow_task") is not None:
            out["pendingWorkflowTask"] = resp["pending_workflow_task"]
        return out

    def history(self) -> list[dict[str, Any]]:
        """Every event of the run, oldest first (SPEC §5.5 HistoryEvent records)."""
        events: list[dict[str, Any]] = []
        token = ""
        while True:
            zap: dict[str, Any] = {"workflow_id": self.workflow_id, "page_size": HISTORY_PAGE}
            query = {"pageSize": str(HISTORY_PAGE)}
            if self.run_id:
                zap["run_id"] = query["runId"] = self.run_id
            if token:
                zap["next_page_token"] = query["nextPageToken"] = token
            via, resp = self._client._remote(Z.Op.GetWorkflowHistory, zap, _path(self.workflow_id, "history"),
                                             None, query, method="GET")
            events.extend(resp.get("events") or [])
            token = resp.get("next_page_token" if via == "zap" else "nextPageToken") or ""
            if not token:
                return events

    # -- async twins -----------------------------------------------------------------

    async def aresult(self, timeout: float | datetime.timedelta | None = None, *, follow: bool = True) -> Any:
        """``result`` without blocking the caller's event loop."""
        return await _off_loop(self.result, timeout, follow=follow)

    async def asignal(self, name: str, arg: Any = None, *, request_id: str | None = None) -> None:
        await _off_loop(self.signal, name, arg, request_id=request_id)

    async def aquery(self, name: str, *args: Any, timeout: float | None = None) -> Any:
        return await _off_loop(self.query, name, *args, timeout=timeout)

    async def acancel(self, reason: str | None = None) -> None:
        await _off_loop(self.cancel, reason)

    async def aterminate(self, reason: str | None = None) -> None:
        await _off_loop(self.terminate, reason)

    async def adescribe(self) -> dict[str, Any]:
        return await _off_loop(self.describe)  # type: ignore[no-any-return]

    async def ahistory(self) -> list[dict[str, Any]]:
        return await _off_loop(self.history)  # type: ignore[no-any-return]


async def _off_loop(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking call on a helper thread (the client's calls block; see tasks.client)."""
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
