"""Waiting for a workflow's result (SPEC §5.6 "Waiting for a result"): a long poll.

``GET NS/workflows/{id}/result`` and ZAP 0x006C answer as soon as the run is
closed, with its result or its failure, following ``nextRunId`` through
ContinueAsNew when asked to. A run still open when ``wait`` passes gets a
RUNNING answer (HTTP 202), and the client asks again.

Why it waits on applied events and never polls the store: a client waiting for
a day-long workflow costs one parked future here, not a read every second. The
state machine notifies every close (``workflow.completed``, ``.failed``, …) in
the apply result of the command that closed the run, on every replica; a
:class:`ResultWaiters` listening to the replicator wakes the requests parked on
that workflow id, and they read the closed run from the local replica, which
has just applied it. The request runs on a replica of the shard (``@routed``
forwards it there from any other node), after the transport's read barrier, so
a run closed just before the request is seen closed at once.

No close is missed between the read that finds the run open and the parking:
apply notifications run on the event loop, and there is no ``await`` between
the two, so a close applied before the read is in the read, and one applied
after it wakes the parked future.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service.forwarding import Concept, routed
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard import reads

log = logging.getLogger("tasks.results")

Json = dict[str, Any]
Key = tuple[str, str, str]  # (stored org, namespace, workflowId)

DEFAULT_WAIT_MS = 30_000
MAX_WAIT_MS = 60_000
MAX_WAITERS = 10_000
"""Requests one node parks at a time; past it a request is refused with 503 and Retry-After
(each parked request holds a connection and a future: the bound keeps a flood from exhausting
file descriptors, while 10 000 futures are a few MiB)."""
MAX_FOLLOW = 1000
"""ContinueAsNew hops one answer follows (a bound on a read, not a limit users meet)."""

OPEN = frozenset({"RUNNING", "CANCELING"})
CLOSE_KINDS = frozenset(
    "workflow." + s for s in ("completed", "failed", "canceled", "terminated", "timed_out", "continued_as_new")
)
_CLOSE_EVENT = {
    "CANCELED": "WORKFLOW_EXECUTION_CANCELED",
    "TERMINATED": "WORKFLOW_EXECUTION_TERMINATED",
    "TIMED_OUT": "WORKFLOW_EXECUTION_TIMED_OUT",
    "FAILED": "WORKFLOW_EXECUTION_FAILED",
}


def is_open(answer: Json) -> bool:
    """Whether a result answer says the run is still open (HTTP answers it with 202)."""
    status = answer.get("status") or ""
    return status.removeprefix(render.STATUS_PREFIX) in OPEN


class ResultWaiters:
    """The requests this node has parked, by workflow id, and what wakes them.

    Everything here runs on the node's event loop (apply listeners are called
    there), so no lock is needed.
    """

    def __init__(self, limit: int = MAX_WAITERS) -> None:
        self.limit = limit
        self.closed = False
        self._by_key: dict[Key, set[asyncio.Future[None]]] = {}
        self._count = 0
        self.woken = 0  # futures woken by a close (a test proves waits end by events)

    def __len__(self) -> int:
        return self._count

    def park(self, key: Key) -> asyncio.Future[None]:
        """A future resolved when ``key``'s workflow closes a run; refused past the limit."""
        if self.closed:
            raise ApiError("unavailable", "this node is shutting down; ask another", retry_after=1)
        if self._count >= self.limit:
            raise ApiError("unavailable", f"this node already waits for {self.limit} results; retry",
                           retry_after=1)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._by_key.setdefault(key, set()).add(fut)
        self._count += 1
        return fut

    def unpark(self, key: Key, fut: asyncio.Future[None]) -> None:
        futs = self._by_key.get(key)
        if futs is None or fut not in futs:
            return
        futs.discard(fut)
        self._count -= 1
        if not futs:
            del self._by_key[key]

    def on_apply(self, group: int, index: int, result: Json) -> None:
        """Replicator listener: wake the waiters of every workflow a command closed a run of.

        Called for every applied command on this node, so it returns at once when
        nothing waits. A migration flip (``pin``) wakes the shard's waiters too:
        their closes will be applied on the new partition, maybe elsewhere.
        """
        if not self._by_key:
            return
        for ev in result.get("_events", ()):
            if ev.get("kind") in CLOSE_KINDS:
                self._wake((ev.get("org") or "_", ev.get("namespace") or "", ev.get("workflow_id") or ""))
        pin = result.get("pin")
        if pin is not None:
            org, ns = pin[0], pin[1]
            for key in [k for k in self._by_key if k[0] == org and k[1] == ns]:
                self._wake(key)

    def _wake(self, key: Key) -> None:
        for fut in self._by_key.get(key, ()):
            if not fut.done():
                fut.set_result(None)
                self.woken += 1

    def close(self) -> None:
        """The node stops: every parked request answers now (503), so draining HTTP waits for none."""
        self.closed = True
        for futs in self._by_key.values():
            for fut in futs:
                if not fut.done():
                    fut.set_exception(ApiError("unavailable", "this node is shutting down; ask another",
                                               retry_after=1))


class Results(Concept):
    """Workflow results: the long poll of SPEC §5.6, on a replica of the shard."""

    attr = "results"

    def __init__(self, svc: Any) -> None:
        super().__init__(svc)
        self.waiters = ResultWaiters()
        svc.replicator.subscribe(self.waiters.on_apply)

    def close(self) -> None:
        self.waiters.close()

    @routed
    async def workflow_result(self, org: str, ns: str, wid: str, rid: str | None, *,
                              wait_ms: int = DEFAULT_WAIT_MS, follow: bool = True) -> Json:
        """The run's outcome once it is closed, waiting up to ``wait_ms`` for it.

        Without ``rid``: the latest run when asked (the one it follows to, with
        ``follow``). An answer whose ``status`` is open means ``wait_ms`` passed.
        """
        names.check_id(wid, "workflowId")
        if rid:
            names.check_run_id(rid)
        if not isinstance(wait_ms, int) or isinstance(wait_ms, bool) or not 0 <= wait_ms <= MAX_WAIT_MS:
            raise ApiError("invalid_argument", f"wait must be between 0s and {MAX_WAIT_MS // 1000}s")
        await self.svc.prepare(org, ns)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_ms / 1000.0
        key: Key = (org, ns, wid)
        while True:
            if not self.svc.holds(org, ns):  # a migration moved the shard while we waited
                return {"status": render.STATUS_PREFIX + "RUNNING", "runId": rid or ""}
            with self.svc.read_txn(org, ns) as txn:
                run = reads.run(txn, org, ns, wid, rid)
                if run is None:
                    raise ApiError("not_found", f"workflow {wid} not found" if not rid
                                   else f"workflow {wid} run {rid} not found")
                if follow:
                    run = _follow(txn, org, ns, wid, run)
                if run["status"] not in OPEN:
                    return outcome(txn, org, ns, run)
            rid = run["runId"]  # the run we wait for, from now on (not whatever starts later)
            remaining = deadline - loop.time()
            if remaining <= 0:
                return {"status": render.STATUS_PREFIX + run["status"], "runId": rid}
            fut = self.waiters.park(key)
            try:
                await asyncio.wait_for(fut, remaining)
            except TimeoutError:
                pass  # read once more: the answer is the run's state at the deadline
            finally:
                self.waiters.unpark(key, fut)


def _follow(txn: Any, org: str, ns: str, wid: str, run: Json) -> Json:
    """The run at the end of ``run``'s ContinueAsNew chain (as far as it is applied here)."""
    for _ in range(MAX_FOLLOW):
        nxt = run.get("nextRunId")
        if run["status"] != "CONTINUED_AS_NEW" or not nxt:
            return run
        after = reads.run(txn, org, ns, wid, nxt)
        if after is None:  # retention removed it: the chain ends here
            return run
        run = after
    return run


def outcome(txn: Any, org: str, ns: str, run: Json) -> Json:
    """A closed run's answer: ``{status, runId, result | failure | nextRunId}``."""
    status = run["status"]
    out: Json = {"status": render.STATUS_PREFIX + status, "runId": run["runId"]}
    if status == "COMPLETED":
        out["result"] = run.get("result")
    elif status == "CONTINUED_AS_NEW":
        out["nextRunId"] = run.get("nextRunId") or ""
    else:
        out["failure"] = _failure(txn, org, ns, run)
    return out


def _failure(txn: Any, org: str, ns: str, run: Json) -> Json:
    """Why the run did not complete, as a Failure record (SPEC §5.1).

    FAILED carries the workflow's own failure (``lastFailure``); the others are
    described from their close event: its timeout type, or the reason and
    identity given to cancel or terminate.
    """
    status = run["status"]
    last = run.get("lastFailure")
    if status == "FAILED" and isinstance(last, dict):
        return render.failure(last) or {}
    attrs = _close_attrs(txn, org, ns, run, _CLOSE_EVENT.get(status, ""))
    if status == "TIMED_OUT":
        kind = attrs.get("timeoutType") or (last or {}).get("timeoutType") or "EXECUTION"
        return {"message": f"workflow timed out ({kind.lower()} timeout)", "type": "TimeoutError",
                "nonRetryable": True, "timeoutType": kind}
    if status == "CANCELED":
        reason = attrs.get("reason") or ""
        out: Json = {"message": "workflow canceled" + (f": {reason}" if reason else ""),
                     "type": "CanceledError", "nonRetryable": True}
        if attrs.get("details") is not None:
            out["details"] = attrs["details"]
        return out
    if status == "TERMINATED":
        reason = attrs.get("reason") or ""
        out = {"message": "workflow terminated" + (f": {reason}" if reason else ""),
               "type": "TerminatedError", "nonRetryable": True}
        if attrs.get("identity"):
            out["details"] = {"identity": attrs["identity"]}
        return out
    return {"message": f"workflow {status.lower()}", "type": "WorkflowError", "nonRetryable": True}


def _close_attrs(txn: Any, org: str, ns: str, run: Json, event_type: str) -> Json:
    """The attributes of the run's close event (one of its last few), or {}."""
    events, _ = reads.history(txn, org, ns, run["runId"], 0, True, 4, run["historyLength"])
    for ev in events:
        if ev.get("eventType") == event_type:
            attrs = ev.get("attributes")
            return attrs if isinstance(attrs, dict) else {}
    return {}
