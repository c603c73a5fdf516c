"""Internal records -> the JSON shapes of SPEC §5.1.

Stored records keep times as epoch ms and durations as ms; this module is the
one place that turns them into RFC 3339 strings, canonical durations and
prefixed enums, so every transport shows the same record.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.protocol.durations import format_duration
from hanzo_tasks.protocol.timefmt import format_time

Json = dict[str, Any]

STATUS_PREFIX = "WORKFLOW_EXECUTION_STATUS_"


def t(ms: int | None) -> str | None:
    return None if ms is None else format_time(ms)


def d(ms: int | None) -> str | None:
    return None if ms is None else format_duration(ms)


def retry_policy(rp: Json | None) -> Json | None:
    if rp is None:
        return None
    return {
        "initialInterval": d(rp["initialInterval"]),
        "backoffCoefficient": rp["backoffCoefficient"],
        "maximumInterval": d(rp["maximumInterval"]),
        "maximumAttempts": rp["maximumAttempts"],
        "nonRetryableErrorTypes": list(rp.get("nonRetryableErrorTypes") or []),
    }


def namespace(rec: Json) -> Json:
    info: Json = {
        "name": rec["name"],
        "state": "NAMESPACE_STATE_" + rec["state"],
        "region": rec.get("region", ""),
        "createTime": t(rec["createTime"]),
    }
    for f in ("description", "ownerEmail"):
        if rec.get(f):
            info[f] = rec[f]
    if rec.get("updateTime"):
        info["updateTime"] = t(rec["updateTime"])
    config: Json = {
        "workflowExecutionRetentionTtl": d(rec["retention"]),
        "apsLimit": rec["apsLimit"],
    }
    for f in (
        "historyArchivalState",
        "historyArchivalUri",
        "visibilityArchivalState",
        "visibilityArchivalUri",
        "customData",
    ):
        if rec.get(f):
            config[f] = rec[f]
    return {"namespaceInfo": info, "config": config, "isActive": rec["state"] == "REGISTERED"}


def failure(f: Json | None, *, with_details: bool = True) -> Json | None:
    if f is None:
        return None
    out = dict(f)
    if not with_details:
        out.pop("details", None)
    return out


def run(r: Json, *, full: bool = True) -> Json:
    """A WorkflowExecution; lists (``full=False``) leave out input, result, memo, failure details."""
    out: Json = {
        "execution": {"workflowId": r["workflowId"], "runId": r["runId"]},
        "type": {"name": r["type"]},
        "taskQueue": r["taskQueue"],
        "status": STATUS_PREFIX + r["status"],
        "startTime": t(r["startTime"]),
        "historyLength": r["historyLength"],
        "attempt": r["attempt"],
        "workflowTaskTimeout": d(r["workflowTaskTimeout"]),
    }
    if r.get("closeTime") is not None:
        out["closeTime"] = t(r["closeTime"])
    if full:
        if "input" in r:
            out["input"] = r["input"]
        if r.get("result") is not None:
            out["result"] = r["result"]
        if r.get("memo") is not None:
            out["memo"] = r["memo"]
    if r.get("lastFailure") is not None:
        out["lastFailure"] = failure(r["lastFailure"], with_details=full)
    if r.get("searchAttrs"):
        out["searchAttrs"] = r["searchAttrs"]
    um = r.get("userMetadata")
    if um:
        meta = {k: um[k] for k in ("summary", "details", "updatedBy") if k in um}
        meta["updatedAt"] = t(um.get("updatedAt"))
        out["userMetadata"] = meta
    if r.get("retryPolicy") is not None:
        out["retryPolicy"] = retry_policy(r["retryPolicy"])
    for f in ("workflowExecutionTimeout", "workflowRunTimeout"):
        if r.get(f) is not None:
            out[f] = d(r[f])
    for f in ("continuedFromRunId", "nextRunId", "scheduleId", "deadLetterReason"):
        if r.get(f):
            out[f] = r[f]
    if r.get("resetFrom"):
        out["resetFrom"] = r["resetFrom"]
    return out


def describe(r: Json) -> Json:
    cfg: Json = {
        "taskQueue": {"name": r["taskQueue"]},
        "workflowExecutionTimeout": d(r.get("workflowExecutionTimeout") or 0),
        "workflowRunTimeout": d(r.get("workflowRunTimeout") or 0),
        "workflowTaskTimeout": d(r["workflowTaskTimeout"]),
    }
    if r.get("retryPolicy") is not None:
        cfg["retryPolicy"] = retry_policy(r["retryPolicy"])
    out: Json = {
        "workflowExecutionInfo": run(r, full=True),
        "executionConfig": cfg,
        "pendingActivities": [],
    }
    wt = r.get("wt")
    if wt:
        p: Json = {
            "state": "WORKFLOW_TASK_STATE_" + wt["state"],
            "scheduledTime": t(wt["scheduledTime"]),
            "attempt": wt["attempt"],
        }
        if wt.get("startedTime") is not None:
            p["startedTime"] = t(wt["startedTime"])
        out["pendingWorkflowTask"] = p
    return out


_DURATION_ATTRS = (
    "workflowTaskTimeout",
    "workflowExecutionTimeout",
    "workflowRunTimeout",
    "startToCloseTimeout",
    "scheduleToCloseTimeout",
    "scheduleToStartTimeout",
    "heartbeatTimeout",
    "startToFireTimeout",
    "backoff",
)
_TIME_ATTRS = ("nominalTime", "nextAttemptTime")


def event(ev: Json) -> Json:
    attrs = dict(ev["attributes"])
    for f in _DURATION_ATTRS:
        if isinstance(attrs.get(f), int):
            attrs[f] = d(attrs[f])
    for f in _TIME_ATTRS:
        if isinstance(attrs.get(f), int):
            attrs[f] = t(attrs[f])
    if isinstance(attrs.get("retryPolicy"), dict):
        attrs["retryPolicy"] = retry_policy(attrs["retryPolicy"])
    return {
        "eventId": ev["eventId"],
        "eventTime": t(ev["eventTime"]),
        "eventType": ev["eventType"],
        "attributes": attrs,
    }


def schedule_action(a: Json) -> Json:
    out: Json = {"workflowType": {"name": a["type"]}, "taskQueue": a.get("taskQueue") or "default"}
    if "input" in a:
        out["input"] = a["input"]
    for f in ("workflowExecutionTimeout", "workflowRunTimeout", "workflowTaskTimeout"):
        if a.get(f) is not None:
            out[f] = d(a[f])
    if a.get("retryPolicy") is not None:
        out["retryPolicy"] = retry_policy(a["retryPolicy"])
    if a.get("memo") is not None:
        out["memo"] = a["memo"]
    if a.get("searchAttrs"):
        out["searchAttributes"] = a["searchAttrs"]
    return out


def schedule(
    s: Json,
    namespace_name: str,
    *,
    future: list[int],
    run_status: dict[tuple[str, str], str],
) -> Json:
    """A Schedule record; ``future`` are the next action times (jitter applied)."""
    info = s["info"]
    pol = s["policies"]
    state = s["state"]
    out_state: Json = {
        "paused": bool(state.get("paused")),
        "limitedActions": bool(state.get("limitedActions")),
        "remainingActions": int(state.get("remainingActions", 0)),
    }
    if state.get("note"):
        out_state["note"] = state["note"]
    out_info: Json = {
        "createTime": t(info["createTime"]),
        "actionCount": info["actionCount"],
        "missedCatchupWindow": info["missedCatchupWindow"],
        "overlapSkipped": info["overlapSkipped"],
        "bufferDropped": info["bufferDropped"],
        "bufferedActions": [t(x) for x in info["buffered"]],
        "runningWorkflows": [{"workflowId": w, "runId": r} for w, r in info["running"]],
        "recentActions": [
            {
                "scheduleTime": t(st),
                "actualTime": t(at),
                "workflowId": w,
                "runId": r,
                "status": STATUS_PREFIX + run_status.get((w, r), "UNSPECIFIED"),
            }
            for st, at, w, r in info["recent"]
        ],
        "futureActionTimes": [t(x) for x in future],
    }
    if info.get("updateTime"):
        out_info["updateTime"] = t(info["updateTime"])
    if future:
        out_info["nextActionTime"] = t(future[0])
    return {
        "scheduleId": s["scheduleId"],
        "namespace": namespace_name,
        "spec": s["spec"],
        "action": schedule_action(s["action"]),
        "policies": {
            "overlapPolicy": "SCHEDULE_OVERLAP_POLICY_" + pol["overlapPolicy"],
            "catchupWindow": d(pol["catchupWindow"]),
            "pauseOnFailure": bool(pol.get("pauseOnFailure")),
        },
        "state": out_state,
        "info": out_info,
    }


def activity(a: Json) -> Json:
    """A StandaloneActivity (SPEC §5.1): times as RFC 3339, durations as strings."""
    out: Json = {
        "execution": {"workflowId": a["activityId"], "runId": a["runId"]},
        "type": {"name": a["type"]},
        "taskQueue": a["taskQueue"],
        "status": "ACTIVITY_TASK_STATE_" + a["status"],
        "startTime": t(a["startTime"]),
        "attempt": a["attempt"],
        "startToCloseTimeout": d(a["startToCloseTimeout"]),
        "historyLength": a["historyLength"],
    }
    if a.get("closeTime") is not None:
        out["closeTime"] = t(a["closeTime"])
    if a.get("retryPolicy"):
        out["retryPolicy"] = retry_policy(a["retryPolicy"])
        if a["retryPolicy"].get("maximumAttempts"):
            out["maximumAttempts"] = a["retryPolicy"]["maximumAttempts"]
    for f in ("input", "result", "failureCause", "identity", "heartbeatDetails"):
        if a.get(f) is not None:
            out[f] = a[f]
    if a.get("lastFailure"):
        out["lastFailure"] = failure(a["lastFailure"])
    for f in ("scheduleToCloseTimeout", "scheduleToStartTimeout", "heartbeatTimeout"):
        if a.get(f):
            out[f] = d(a[f])
    if a.get("lastHeartbeatTime") is not None:
        out["lastHeartbeatTime"] = t(a["lastHeartbeatTime"])
    return out


def batch(rec: Json) -> Json:
    """A BatchOperation as the API shows it (the cursor is internal)."""
    out = {k: v for k, v in rec.items() if k != "cursor"}
    out["startTime"] = t(rec["startTime"])
    if rec.get("closeTime") is not None:
        out["closeTime"] = t(rec["closeTime"])
    return out


def identity(rec: Json) -> Json:
    """An Identity record (SPEC §5.1)."""
    return {**rec, "grantTime": t(rec["grantTime"])}


# ---- deployments and nexus endpoints (SPEC §4.7) ----------------------------------------

DEPLOYMENT_STATE_PREFIX = "DEPLOYMENT_STATE_"


def _copy_set(out: Json, rec: Json, fields: tuple[str, ...]) -> None:
    for f in fields:
        if rec.get(f):
            out[f] = rec[f]


def deployment_version(v: Json) -> Json:
    out: Json = {"buildId": v["buildId"], "state": DEPLOYMENT_STATE_PREFIX + v["state"]}
    _copy_set(out, v, ("description", "compute", "image", "env"))
    out["createTime"] = t(v["createTime"])
    if v.get("updateTime"):
        out["updateTime"] = t(v["updateTime"])
    return out


def deployment(rec: Json) -> Json:
    out: Json = {"name": rec["name"], "namespace": rec["namespace"]}
    _copy_set(out, rec, ("description", "ownerEmail", "defaultCompute"))
    out["versions"] = [deployment_version(v) for v in rec["versions"]]
    out["defaultBuildId"] = rec["defaultBuildId"]
    out["createTime"] = t(rec["createTime"])
    if rec.get("updateTime"):
        out["updateTime"] = t(rec["updateTime"])
    return out


def nexus_endpoint(rec: Json) -> Json:
    out: Json = {"name": rec["name"], "namespace": rec["namespace"]}
    _copy_set(out, rec, ("description",))
    out["target"] = rec["target"]
    out["createTime"] = t(rec["createTime"])
    return out


# ---- workers (SPEC §4.5) ------------------------------------------------------------------


def worker(identity: str, ns: str, task_queue: str, sdk: tuple[str, str], build: str, first: int, last: int,
           subscriptions: list[Json]) -> Json:
    """A worker of the registry, merged from this node's and its peers' reports."""
    out: Json = {"identity": identity, "namespace": ns, "taskQueue": task_queue}
    if sdk[0]:
        out["sdkName"] = sdk[0]
    if sdk[1]:
        out["sdkVersion"] = sdk[1]
    if build:
        out["buildId"] = build
    out["firstSeen"] = t(first)
    out["lastHeartbeat"] = t(last)
    out["subscriptions"] = sorted(subscriptions, key=lambda s: (s["taskQueue"], s["kind"], s["nodeId"]))
    return out
