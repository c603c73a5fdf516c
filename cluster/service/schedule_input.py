"""Schedule input: validation and the canonical stored form (SPEC §5.8).

The spec is stored in its canonical JSON form (durations canonical, times in
RFC 3339), and ``times_for`` turns it into a ``ScheduleTimes`` evaluator,
cached, for the timer service and for describe / matching-times.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.durations import format_duration, parse_duration
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.schedule_spec import ScheduleTimes, SpecError, classify, compile_cron
from hanzo_tasks.protocol.timefmt import format_time, parse_time

Json = dict[str, Any]


def normalize_spec(v: Any) -> Json:
    if not isinstance(v, dict):
        raise I.bad("spec must be an object")
    crons = v.get("cronString") or []
    if isinstance(crons, str):
        crons = [crons]
    if not isinstance(crons, list) or not all(isinstance(c, str) for c in crons):
        raise I.bad("spec.cronString must be a list of strings")
    tz = v.get("timezone") or "UTC"
    if not isinstance(tz, str):
        raise I.bad("spec.timezone must be a string")
    out_crons: list[str] = []
    for c in crons:
        try:
            compile_cron(c, tz)
        except SpecError as e:
            raise I.bad(f"spec.cronString: {e}") from None
        out_crons.append(c.strip())
    intervals = v.get("interval") or []
    if not isinstance(intervals, list):
        raise I.bad("spec.interval must be a list of {interval, phase?}")
    out_int: list[Json] = []
    for item in intervals:
        if isinstance(item, str):
            item = {"interval": item}
        if not isinstance(item, dict):
            raise I.bad("spec.interval items must be objects")
        every = I.opt_duration(item, "interval")
        if every is None or every < 1000:
            raise I.bad("spec.interval.interval must be at least 1s")
        if every % 1000:
            raise I.bad("spec.interval.interval must be whole seconds")
        phase = I.opt_duration(item, "phase") or 0
        if not 0 <= phase < every:
            raise I.bad("spec.interval.phase must be >= 0 and < interval")
        out_int.append({"interval": format_duration(every), "phase": format_duration(phase)})
    if not out_crons and not out_int:
        raise I.bad("spec needs at least one cronString or interval")
    out: Json = {}
    if out_crons:
        out["cronString"] = out_crons
    if out_int:
        out["interval"] = out_int
    start = I.opt_time(v, "startTime")
    end = I.opt_time(v, "endTime")
    if start is not None and end is not None and start >= end:
        raise I.bad("spec.startTime must be before spec.endTime")
    if start is not None:
        out["startTime"] = format_time(start)
    if end is not None:
        out["endTime"] = format_time(end)
    jitter = I.opt_duration(v, "jitter", lo_ms=0)
    if jitter:
        out["jitter"] = format_duration(jitter)
    out["timezone"] = tz
    try:
        times_for(out)
    except SpecError as e:
        raise I.bad(f"spec: {e}") from None
    return out


def recurring_spec(name: str | None, spec: Any) -> Json:
    """A duration or cron string, classified as SPEC §2.2 says, as a ScheduleSpec
    (§5.8). ZAP ``ScheduleRecurring`` and MCP ``create_schedule`` both read a spec
    string with it, so they read it alike."""
    if not isinstance(spec, str):
        raise I.bad("spec must be a string (a duration or a cron expression)")
    try:
        kind, value = classify(spec)
    except SpecError as e:
        raise I.bad(f'spec for "{name}": {e}') from None
    if kind == "interval":
        return {"interval": [{"interval": format_duration(int(value))}]}
    return {"cronString": [value]}


def _key(spec: Json) -> tuple:
    return (
        tuple(spec.get("cronString") or ()),
        tuple((i["interval"], i["phase"]) for i in spec.get("interval") or ()),
        spec.get("startTime"),
        spec.get("endTime"),
        spec.get("timezone") or "UTC",
    )


@lru_cache(maxsize=4096)
def _times(key: tuple) -> ScheduleTimes:
    crons, intervals, start, end, tz = key
    return ScheduleTimes(
        list(crons),
        [(parse_duration(i), parse_duration(p)) for i, p in intervals],
        parse_time(start) if start else None,
        parse_time(end) if end else None,
        tz,
    )


def times_for(spec: Json) -> ScheduleTimes:
    return _times(_key(spec))


def jitter_ms(spec: Json) -> int:
    j = spec.get("jitter")
    return parse_duration(j) if j else 0


def normalize_action(v: Any, max_payload: int) -> Json:
    if not isinstance(v, dict):
        raise I.bad("action must be an object")
    wtype = I.name_obj(v, "workflowType", required=True)
    tq = v.get("taskQueue")
    if isinstance(tq, dict):
        tq = tq.get("name")
    if tq is None or tq == "":
        tq = "default"
    names.check_id(tq, "action.taskQueue")
    out: Json = {"type": wtype, "taskQueue": tq}
    if "input" in v:
        out["input"] = I.payload(v, "input", max_payload)
    for f in ("workflowExecutionTimeout", "workflowRunTimeout"):
        ms = I.opt_duration(v, f, lo_ms=1)
        if ms is not None:
            out[f] = ms
    wtt = I.opt_duration(v, "workflowTaskTimeout", lo_ms=1000, hi_ms=600_000)
    if wtt is not None:
        out["workflowTaskTimeout"] = wtt
    rp = I.retry_policy(v.get("retryPolicy"), "action.retryPolicy")
    if rp is not None:
        out["retryPolicy"] = rp
    memo = I.opt_obj(v, "memo")
    if memo is not None:
        out["memo"] = memo
    sa = I.opt_obj(v, "searchAttributes")
    if sa:
        out["searchAttrs"] = sa
    return out


def normalize_policies(v: Any) -> Json:
    if v is None:
        v = {}
    if not isinstance(v, dict):
        raise I.bad("policies must be an object")
    overlap = "SKIP"
    if v.get("overlapPolicy") is not None:
        overlap = I.overlap_policy(v["overlapPolicy"], "policies.overlapPolicy")
    catchup = I.opt_duration(v, "catchupWindow", lo_ms=1000)
    return {
        "overlapPolicy": overlap,
        "catchupWindow": 60_000 if catchup is None else catchup,
        "pauseOnFailure": I.opt_bool(v, "pauseOnFailure"),
    }


def normalize_state(v: Any) -> Json:
    if v is None:
        v = {}
    if not isinstance(v, dict):
        raise I.bad("state must be an object")
    out: Json = {"paused": I.opt_bool(v, "paused")}
    note = I.opt_str(v, "note")
    if note:
        out["note"] = note
    limited = I.opt_bool(v, "limitedActions")
    if limited:
        out["limitedActions"] = True
        out["remainingActions"] = I.opt_int(v, "remainingActions", 0, lo=0)
    return out


def check_schedule_id(v: Any) -> str:
    if not names.is_id(v, 200):
        raise ApiError("invalid_argument", f"invalid scheduleId: {v!r}" if isinstance(v, str) and len(v) < 80 else "invalid scheduleId")
    return v
