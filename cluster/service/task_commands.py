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
from dataclasses import dataclass
from typing import Any

from hanzo_tasks.cluster.service.inputs import check_payload
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


PAYLOAD_FIELDS = ("result", "failure", "details", "input", "memo", "search_attributes")
"""Fields of a command that carry the worker's data into the store: each is
held to ``limits.max_payload``, as the same data is when a client sends it."""


@dataclass(frozen=True, slots=True)
class Normalized:
    """The commands in engine form, or the index of the first invalid one and why."""

    commands: list[Json]
    bad_index: int | None = None
    error: ApiError | None = None
    """Set when the command is refused for a reason with its own code (``too_large``)."""


def normalize(commands: Any, check_search: SearchCheck) -> tuple[list[Json], int | None]:
    """The commands in engine form, and the index of the first invalid one (None: all valid)."""
    n = normalize_checked(commands, check_search, 0)
    return n.commands, n.bad_index


def normalize_checked(commands: Any, check_search: SearchCheck, max_payload: int) -> Normalized:
    """:func:`normalize`, and each command's payloads held to ``max_payload`` (0 = no limit).

    A payload over it makes the command invalid like any bad field (nothing of
    the list is applied; the task fails with ``bad_command``), and the error
    says ``too_large`` so that the worker is answered 413 (SPEC §0, §4.1)."""
    if not isinstance(commands, list):
        return Normalized([], 0)
    out: list[Json] = []
    for i, c in enumerate(commands):
        try:
            cmd = _one(c, check_search)
            for f in PAYLOAD_FIELDS:
                if f in cmd:
                    check_payload(cmd[f], f, max_payload)
        except ApiError as e:
            return Normalized([], i, e if e.code == "too_large" else None)
        except BadCommand:
            return Normalized([], i)
        out.append(cmd)
    return Normalized(out)


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
    if t == "StartChildWorkflowExecution":
        return _start_child(c, check_search)
    if t in ("SignalExternalWorkflowExecution", "RequestCancelExternalWorkflowExecution"):
        return _external(c)
    raise BadCommand(f"unknown command type {t!r}")


PARENT_CLOSE_POLICIES = ("TERMINATE", "ABANDON", "REQUEST_CANCEL")
CHILD_CONFLICT_POLICIES = ("FAIL", "TERMINATE_EXISTING")


def _enum(c: Json, field: str, prefix: str, allowed: tuple[str, ...]) -> str | None:
    """An enum field, with or without its long prefix (``PARENT_CLOSE_POLICY_ABANDON`` = ``ABANDON``)."""
    v = c.get(field)
    if v is None:
        return None
    short = v.removeprefix(prefix) if isinstance(v, str) else None
    if short not in allowed:
        raise BadCommand(f"{field} must be one of {', '.join(allowed)}")
    return short


def _start_child(c: Json, check_search: SearchCheck) -> Json:
    """StartChildWorkflowExecution: the child's start, as ContinueAsNew names its fields."""
    out: Json = {"type": c["type"], "workflow_type": _id(c, "workflow_type")}
    for f in ("workflow_id", "task_queue"):
        ident = _id(c, f, required=False)
        if ident is not None:
            out[f] = ident
    if "input" in c:
        out["input"] = c.get("input")
    for f in ("workflow_execution_timeout_ms", "workflow_run_timeout_ms", "workflow_task_timeout_ms"):
        v = _ms(c, f, positive=f == "workflow_task_timeout_ms")
        if v:
            out[f] = v
    rp = retry_policy(c.get("retry_policy"))
    if rp is not None:
        out["retry_policy"] = rp
    memo = _map(c, "memo")
    if memo is not None:
        out["memo"] = memo
    sa = _map(c, "search_attributes")
    if sa:
        out["search_attributes"] = check_search(sa, False)
    policy = _enum(c, "parent_close_policy", "PARENT_CLOSE_POLICY_", PARENT_CLOSE_POLICIES)
    if policy is not None:
        out["parent_close_policy"] = policy
    if c.get("id_conflict_policy") is not None and str(c["id_conflict_policy"]).endswith("USE_EXISTING"):
        raise BadCommand("id_conflict_policy USE_EXISTING cannot adopt a run as a child")
    conflict = _enum(c, "id_conflict_policy", "WORKFLOW_ID_CONFLICT_POLICY_", CHILD_CONFLICT_POLICIES)
    if conflict is not None:
        out["id_conflict_policy"] = conflict
    return out


def _external(c: Json) -> Json:
    """SignalExternalWorkflowExecution / RequestCancelExternalWorkflowExecution."""
    out: Json = {"type": c["type"], "workflow_id": _id(c, "workflow_id")}
    rid = _id(c, "run_id", required=False)
    if rid is not None:
        out["run_id"] = rid
    only = c.get("child_workflow_only")
    if only is not None and not isinstance(only, bool):
        raise BadCommand("child_workflow_only must be a boolean")
    if only:
        out["child_workflow_only"] = True
    if c["type"] == "SignalExternalWorkflowExecution":
        name = c.get("signal_name")
        if not isinstance(name, str) or not name or len(name) > 1000:
            raise BadCommand("signal_name must be a non-empty string")
        out["signal_name"] = name
        if "input" in c:
            out["input"] = c.get("input")
    else:
        reason = c.get("reason")
        if reason is not None and not isinstance(reason, str):
            raise BadCommand("reason must be a string")
        if reason:
            out["reason"] = reason
    return out


def _required(v: int | None, field: str) -> int:
    if v is None:
        raise BadCommand(f"{field} is required")
    return v
