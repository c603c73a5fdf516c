"""Workflow ops: SubmitTask, Start, SignalWithStart, Signal, Cancel, Terminate,
Describe, List, History, Query and Reset, each a ZAP body onto the service's
workflow methods and its record back into the snake_case wrappers of §8.4."""

from __future__ import annotations

from hanzo_tasks.cluster.api.zap.call import Call
from hanzo_tasks.cluster.api.zap.fields import (
    Json,
    bad,
    boolean,
    copy_str,
    integer,
    mapping,
    ms_duration,
    page,
    retry_policy,
    run_id,
    text,
)


def _start_body(b: Json) -> Json:
    """StartWorkflow fields (0x0060) -> the service's StartWorkflow body (§5.3)."""
    out: Json = {"workflowType": {"name": text(b, "workflow_type", required=True)}}
    tq = text(b, "task_queue")
    if tq:
        out["taskQueue"] = {"name": tq}
    copy_str(b, out, (("workflow_id", "workflowId"), ("request_id", "requestId"), ("identity", "identity")))
    rid = run_id(b)
    if rid:
        out["runId"] = rid
    if "input" in b:
        out["input"] = b["input"]
    if b.get("id_conflict_policy") is not None:
        out["workflowIdConflictPolicy"] = b["id_conflict_policy"]
    for zap_name, camel in (
        ("execution_timeout_ms", "workflowExecutionTimeout"),
        ("run_timeout_ms", "workflowRunTimeout"),
        ("task_timeout_ms", "workflowTaskTimeout"),
    ):
        d = ms_duration(b, zap_name)
        if d is not None:
            out[camel] = d
    rp = retry_policy(b.get("retry_policy"))
    if rp is not None:
        out["retryPolicy"] = rp
    memo = mapping(b, "memo")
    if memo is not None:
        out["memo"] = memo
    sa = mapping(b, "search_attributes")
    if sa is not None:
        out["searchAttributes"] = sa
    return out


def _started(rec: Json) -> Json:
    return {
        "workflow_id": rec["execution"]["workflowId"],
        "run_id": rec["execution"]["runId"],
        "started": rec["started"],
    }


async def op_submit_task(c: Call) -> Json:
    b = c.body
    body: Json = {
        "workflowType": {"name": text(b, "task_type", required=True)},
        "taskQueue": {"name": text(b, "task_queue") or "default"},
    }
    if "payload" in b:
        body["input"] = b["payload"]
    copy_str(b, body, (("workflow_id", "workflowId"), ("request_id", "requestId")))
    rp = retry_policy(b.get("retry_policy"))
    if rp is not None:
        body["retryPolicy"] = rp
    return _started(await c.service.workflows.start_workflow(c.org, c.ns, body))


async def op_start(c: Call) -> Json:
    return _started(await c.service.workflows.start_workflow(c.org, c.ns, _start_body(c.body)))


async def op_signal_with_start(c: Call) -> Json:
    b = c.body
    body = _start_body(b)
    body["signalName"] = text(b, "signal_name", required=True)
    if "signal_input" in b:
        body["signalInput"] = b["signal_input"]
    return _started(await c.service.workflows.start_workflow(c.org, c.ns, body, signal=True))


def _wid(c: Call) -> str:
    return text(c.body, "workflow_id", required=True)  # type: ignore[return-value]


async def op_signal(c: Call) -> Json:
    b = c.body
    body: Json = {"name": text(b, "signal_name", required=True)}
    if "input" in b:
        body["input"] = b["input"]
    copy_str(b, body, (("identity", "identity"), ("request_id", "requestId")))
    await c.service.workflows.signal_workflow(c.org, c.ns, _wid(c), run_id(b), body)
    return {}


def _reason_body(b: Json) -> Json:
    body: Json = {}
    copy_str(b, body, (("reason", "reason"), ("identity", "identity")))
    return body


async def op_cancel(c: Call) -> Json:
    rec = await c.service.workflows.cancel_workflow(c.org, c.ns, _wid(c), run_id(c.body), _reason_body(c.body))
    return {"execution": rec}


async def op_terminate(c: Call) -> Json:
    rec = await c.service.workflows.terminate_workflow(c.org, c.ns, _wid(c), run_id(c.body), _reason_body(c.body))
    return {"execution": rec}


async def op_describe(c: Call) -> Json:
    d = await c.service.workflows.describe_workflow(c.org, c.ns, _wid(c), run_id(c.body))
    out: Json = {
        "execution": d["workflowExecutionInfo"],
        "execution_config": d["executionConfig"],
        "pending_activities": d["pendingActivities"],
    }
    if d.get("pendingWorkflowTask") is not None:
        out["pending_workflow_task"] = d["pendingWorkflowTask"]
    return out


async def op_list_workflows(c: Call) -> Json:
    size, token = page(c.body)
    res = await c.service.workflows.list_workflows(c.org, c.ns, text(c.body, "query"), size, token)
    return {"executions": res["executions"], "next_page_token": res["nextPageToken"]}


async def op_history(c: Call) -> Json:
    b = c.body
    size, token = page(b)
    after = integer(b, "after_event_id", lo=0) or 0
    res = await c.service.workflows.history(c.org, c.ns, _wid(c), run_id(b), after, bool(boolean(b, "reverse")), size, token)
    return {"events": res["events"], "next_page_token": res["nextPageToken"]}


async def op_query(c: Call) -> Json:
    b = c.body
    body: Json = {"queryType": text(b, "query_type", required=True)}
    if "args" in b:
        body["args"] = b["args"]
    timeout = ms_duration(b, "timeout_ms")
    if timeout is not None:
        body["timeout"] = timeout
    res = await c.service.workflows.query_metadata(c.org, c.ns, _wid(c), run_id(b), body)
    return {"result": res["queryResult"]}


async def op_reset(c: Call) -> Json:
    b = c.body
    event_id = b.get("event_id")
    if not isinstance(event_id, int) or isinstance(event_id, bool):
        raise bad("event_id must be an integer")
    body: Json = {"eventId": event_id}
    rid = run_id(b)
    if rid:
        body["runId"] = rid
    copy_str(b, body, (("reason", "reason"), ("identity", "identity"), ("request_id", "requestId")))
    return {"execution": await c.service.workflows.reset_workflow(c.org, c.ns, _wid(c), body)}
