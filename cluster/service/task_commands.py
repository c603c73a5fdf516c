"""Field checks for the commands a workflow task completes with (SPEC §5.6, 0x00A2).

The proposer checks what needs no shard state — types, names, durations,
retry policies, registered search attributes — and puts the commands in the
one form the state machine applies (``shard.wf_commands``), which then checks
what depends on the run (duplicate or unknown timers and activities, terminal
position). A command that fails here is reported by index, and the task is
still recorded as failed with cause ``bad_command`` (nothing of the list is
applied), exactly as a state-dependent rejection is.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hanzo_tasks.protocol import fields, names
from hanzo_tasks.protocol.errors import ApiError

Json = dict[str, Any]

TIMEOUT_FIELDS = ("schedule_to_close_timeout_ms", "schedule_to_start_timeout_ms", "start_to_close_timeout_ms",
                  "heartbeat_timeout_ms")


class BadCommand(ValueError):
    """A command with invalid fields."""


def _id(c: Json, field: str, *, required: bool = True) -> str | None:
    v = c.get(field)
    if v is None and not required:
        return None
    try:
        return names.check_id(v, field)
    except ApiError as e:
        raise BadCommand(e.message) from None


def _ms(c: Json, field: str, *, positive: bool = False) -> int | None:
    v = c.get(field)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < (1 if positive else 0) or v > 10 * 365 * 86_400_000:
        raise BadCommand(f"{field} must be {'a positive' if positive else 'a non-negative'} integer (ms)")
    return v


def _attempts(rp: Json, field: str) -> int:
    attempts = rp.get(field) or 0
    if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 0:
        raise BadCommand(f"retry_policy.{field} must be a non-negative integer")
    return attempts


_ZAP_RETRY = fields.RetryRules(
    "retry_policy",
    "snake",
    interval=lambda rp, field: _ms(rp, field, positive=True),
    attempts=_attempts,
    error=BadCommand,
    null_coefficient=True,
    max_coefficient=1000,
)
"""Over ZAP: integer ms; a null backoff_coefficient is the default; at most 1000."""


def retry_policy(rp: Any) -> Json | None:
    """A ZAP retry policy (snake_case, ms) in the engine's form."""
    return fields.retry_policy(rp, _ZAP_RETRY)


_map = fields.FieldReader(BadCommand).mapping_of


SearchCheck = Callable[[Json, bool], Json]
"""Checks search attributes against the namespace's registry (second arg: nulls allowed)."""


def normalize(commands: Any, check_search: SearchCheck) -> tuple[list[Json], int | None]:
    """The commands in engine form, and the index of the first invalid one (None: all valid)."""
    if not isinstance(commands, list):
        return [], 0
    out: list[Json] = []
    for i, c in enumerate(commands):
        try:
            out.append(_one(c, check_search))
        except (BadCommand, ApiError):
            return [], i
    return out, None


def _one(c: Any, check_search: SearchCheck) -> Json:
    if not isinstance(c, dict) or not isinstance(c.get("type"), str):
        raise BadCommand("a command is a map with a type")
    t = c["type"]
    if t == "CompleteWorkflowExecution":
        return {"type": t, "result": c.get("result")}
    if t == "FailWorkflowExecution":
        failure = c.get("failure")
        if not isinstance(failure, dict) or not isinstance(failure.get("message"), str):
            raise BadCommand("failure must be a map with a message")
        return {"type": t, "failure": failure}
    if t == "CancelWorkflowExecution":
        return {"type": t, "details": c.get("details")}
    if t == "RecordMarker":
        name = c.get("marker_name")
        if not isinstance(name, str) or not name or len(name) > 1000:
            raise BadCommand("marker_name must be a non-empty string")
        return {"type": t, "marker_name": name, "details": c.get("details")}
    if t == "StartTimer":
        return {"type": t, "timer_id": _id(c, "timer_id"),
                "start_to_fire_timeout_ms": _required(_ms(c, "start_to_fire_timeout_ms", positive=True),
                                                      "start_to_fire_timeout_ms")}
    if t == "CancelTimer":
        return {"type": t, "timer_id": _id(c, "timer_id")}
    if t == "RequestCancelActivityTask":
        return {"type": t, "scheduled_event_id": _required(_ms(c, "scheduled_event_id", positive=True),
                                                           "scheduled_event_id")}
    if t == "ScheduleActivityTask":
        out: Json = {"type": t, "activity_type": _id(c, "activity_type")}
        aid = _id(c, "activity_id", required=False)
        if aid is not None:
            out["activity_id"] = aid
        tq = _id(c, "task_queue", required=False)
        if tq is not None:
            out["task_queue"] = tq
        if "input" in c:
            out["input"] = c.get("input")
        for f in TIMEOUT_FIELDS:
            v = _ms(c, f)
            if v:
                out[f] = v
        rp = retry_policy(c.get("retry_policy"))
        if rp is not None:
            out["retry_policy"] = rp
        return out
    if t == "UpsertSearchAttributes":
        sa = _map(c, "search_attributes")
        if not sa:
            raise BadCommand("search_attributes must be a non-empty map")
        return {"type": t, "search_attributes": check_search(sa, True)}
    if t == "ContinueAsNew":
        out = {"type": t}
        for f in ("workflow_type", "task_queue"):
            ident = _id(c, f, required=False)
            if ident is not None:
                out[f] = ident
        if "input" in c:
            out["input"] = c.get("input")
        run_timeout = _ms(c, "workflow_run_timeout_ms")
        if run_timeout:
            out["workflow_run_timeout_ms"] = run_timeout
        task_timeout = _ms(c, "workflow_task_timeout_ms", positive=True)
        if task_timeout:
            out["workflow_task_timeout_ms"] = task_timeout
        rp = retry_policy(c.get("retry_policy"))
        if rp is not None:
            out["retry_policy"] = rp
        memo = _map(c, "memo")
        if memo is not None:
            out["memo"] = memo
        sa = _map(c, "search_attributes")
        if sa:
            out["search_attributes"] = check_search(sa, False)
        return out
    raise BadCommand(f"unknown command type {t!r}")


def _required(v: int | None, field: str) -> int:
    if v is None:
        raise BadCommand(f"{field} is required")
    return v
