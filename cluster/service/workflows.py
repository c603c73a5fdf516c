"""Workflow runs (SPEC §4.3): start (and signal-with-start), signal, cancel,
terminate, reset, metadata and queries, describe, list with the visibility query
language, history and the executions of one workflow id.
"""

from __future__ import annotations

import logging
from typing import Any

from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service.forwarding import Concept, routed
from hanzo_tasks.cluster.service.namespaces import attr_type_ok
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard import reads
from hanzo_tasks.shard.visibility import QueryError, compile_query, run_view

log = logging.getLogger("tasks.service")

Json = dict[str, Any]


class Workflows(Concept):
    """Workflow runs: the workflows half of a node's service."""

    attr = "workflows"

    def start_spec(self, org: str, ns: str, body: Json) -> Json:
        """Validate a StartWorkflow body (SPEC §5.3) into the command's ``start`` map."""
        wtype = I.name_obj(body, "workflowType", required=True)
        spec: Json = {"type": wtype}
        wid = I.opt_str(body, "workflowId")
        if wid:
            spec["workflowId"] = names.check_id(wid, "workflowId")
        rid = I.opt_str(body, "runId")
        if rid:
            spec["runId"] = names.check_run_id(rid)
        spec["taskQueue"] = I.name_obj(body, "taskQueue", required=False) or "default"
        if "input" in body:
            spec["input"] = I.payload(body, "input", self.svc.max_payload)
        req = I.request_id(body)
        if req:
            spec["requestId"] = req
        if body.get("workflowIdConflictPolicy") is not None:
            spec["conflict"] = I.conflict_policy(body["workflowIdConflictPolicy"])
        for f in ("workflowExecutionTimeout", "workflowRunTimeout"):
            ms = I.opt_duration(body, f, lo_ms=0)
            if ms:
                spec[f] = ms
        spec["workflowTaskTimeout"] = (
            I.opt_duration(body, "workflowTaskTimeout", lo_ms=1000, hi_ms=600_000) or 10_000
        )
        rp = I.retry_policy(body.get("retryPolicy"))
        if rp is not None:
            spec["retryPolicy"] = rp
        memo = I.opt_obj(body, "memo")
        if memo is not None:
            spec["memo"] = I.payload(body, "memo", self.svc.max_payload)
        sa = I.opt_obj(body, "searchAttributes")
        if sa:
            spec["searchAttrs"] = self.check_search_attrs(org, ns, sa)
        ident = I.opt_str(body, "identity")
        if ident:
            spec["identity"] = ident
        return spec

    def check_search_attrs(self, org: str, ns: str, sa: Json) -> Json:
        with self.svc.read_txn(org, ns) as txn:
            registered = reads.search_attrs(txn, org, ns)
        for name, value in sa.items():
            typ = registered.get(name)
            if typ is None:
                raise I.bad(f"search attribute {name} is not registered")
            if not attr_type_ok(typ, value):
                raise I.bad(f"search attribute {name} must be of type {typ}")
        return sa

    @routed
    async def start_workflow(self, org: str, ns: str, body: Json, *, signal: bool = False) -> Json:
        await self.svc.prepare(org, ns, rate_limited=True)
        spec = self.start_spec(org, ns, body)
        fields: Json = {"start": spec}
        if signal:
            name = body.get("signalName")
            if not isinstance(name, str) or not name:
                raise I.bad("signalName is required")
            names.check_id(name, "signalName")
            key = "signalPayload" if "signalPayload" in body else "signalInput"
            sig: Json = {
                "signalName": name,
                "input": I.payload(body, key, self.svc.max_payload),
                "identity": spec.get("identity") or "",
            }
            fields["signal"] = sig
        res = await self.svc.propose(org, ns, "wf.start", **fields)
        out = render.run(res["run"])
        out["started"] = res["started"]
        return out

    @routed
    async def signal_workflow(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        await self.svc.prepare(org, ns, rate_limited=True)
        names.check_id(wid, "workflowId")
        name = body.get("name", body.get("signalName"))
        if not isinstance(name, str) or not name:
            raise I.bad("signal name is required")
        names.check_id(name, "signal name")
        key = "payload" if "payload" in body else "input"
        await self.svc.propose(
            org,
            ns,
            "wf.signal",
            workflowId=wid,
            runId=rid,
            name=name,
            input=I.payload(body, key, self.svc.max_payload),
            identity=I.opt_str(body, "identity") or "",
            requestId=I.request_id(body),
        )
        return {"status": "signaled"}

    async def _run_op(self, op: str, org: str, ns: str, wid: str, rid: str | None, **fields: Any) -> Json:
        await self.svc.prepare(org, ns, rate_limited=op in ("wf.cancel", "wf.terminate", "wf.reset"))
        names.check_id(wid, "workflowId")
        res = await self.svc.propose(org, ns, op, workflowId=wid, runId=rid, **fields)
        return render.run(res["run"])

    @routed
    async def cancel_workflow(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        return await self._run_op(
            "wf.cancel", org, ns, wid, rid,
            reason=I.opt_str(body, "reason") or "", identity=I.opt_str(body, "identity") or "",
            cancelAckMs=self.svc.cfg.timeouts.cancel_ack,
        )

    @routed
    async def terminate_workflow(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        return await self._run_op(
            "wf.terminate", org, ns, wid, rid,
            reason=I.opt_str(body, "reason") or "", identity=I.opt_str(body, "identity") or "",
        )

    @routed
    async def reset_workflow(self, org: str, ns: str, wid: str, body: Json) -> Json:
        rid = I.opt_str(body, "runId") or None
        if rid:
            names.check_run_id(rid)
        event_id = body.get("eventId")
        if isinstance(event_id, str) and event_id.isascii() and event_id.isdigit():
            event_id = int(event_id)
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            raise I.bad("eventId must be an integer")
        return await self._run_op(
            "wf.reset", org, ns, wid, rid,
            eventId=event_id,
            reason=I.opt_str(body, "reason") or "",
            identity=I.opt_str(body, "identity") or "",
            requestId=I.request_id(body),
        )

    @routed
    async def workflow_metadata(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        fields: Json = {}
        for f in ("summary", "details", "updatedBy"):
            if f in body:
                v = body[f]
                if not isinstance(v, str):
                    raise I.bad(f"{f} must be a string")
                fields[f] = v
        return await self._run_op("wf.metadata", org, ns, wid, rid, **fields)

    @routed
    async def describe_workflow(self, org: str, ns: str, wid: str, rid: str | None) -> Json:
        await self.svc.prepare(org, ns)
        names.check_id(wid, "workflowId")
        with self.svc.read_txn(org, ns) as txn:
            return render.describe(_run(txn, org, ns, wid, rid))

    @routed
    async def query_metadata(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        """SPEC §5.4 queries: ``__workflow_metadata`` here, others by the worker holding the run."""
        await self.svc.prepare(org, ns)
        names.check_id(wid, "workflowId")
        qtype = body.get("queryType")
        if not isinstance(qtype, str) or not qtype:
            raise I.bad("queryType is required")
        timeout = I.opt_duration(body, "timeout", lo_ms=1, hi_ms=self.svc.cfg.timeouts.query_max)
        if timeout is None:
            timeout = self.svc.cfg.timeouts.query_default
        with self.svc.read_txn(org, ns) as txn:
            r = reads.run(txn, org, ns, wid, rid)
        if r is None:
            raise ApiError("not_found", f"workflow {wid} not found")
        if qtype == "__workflow_metadata":
            return {"queryResult": {"workflowType": r["type"],
                                    "status": render.STATUS_PREFIX + r["status"],
                                    "historyLength": r["historyLength"], "attempt": r["attempt"]}}
        if r["status"] not in ("RUNNING", "CANCELING"):
            raise ApiError("failed_precondition", f"workflow {wid} is not running")
        if self.svc.query_handler is None:
            raise ApiError("no_workers", "no worker holds this workflow", retry_after=1)
        result = await self.svc.query_handler(org, ns, r, qtype, body.get("args"), timeout / 1000.0)
        return {"queryResult": result}

    def compile_query(self, org: str, ns: str, query: str | None):
        if query is not None and len(query) > 4096:
            raise I.bad("query is longer than 4096 characters")
        with self.svc.read_txn(org, ns) as txn:
            attrs = reads.search_attrs(txn, org, ns)
        try:
            return compile_query(query or "", attrs)
        except QueryError as e:
            raise I.bad(f"bad query: {e}") from None

    @routed
    async def list_workflows(self, org: str, ns: str, query: str | None, size: int, token: str | None,
                             *, dead: bool = False) -> Json:
        await self.svc.prepare(org, ns)
        q = self.compile_query(org, ns, query)
        kind = "dead" if dead else "workflows"
        after = I.read_token(token, kind, f"{org}/{ns}/{query or ''}")
        with self.svc.read_txn(org, ns) as txn:
            runs, last = reads.list_runs(txn, org, ns, lambda r: q.matches(run_view(r)), after, size, dead=dead)
        out = []
        for r in runs:
            rec = render.run(r, full=False)
            if dead and r.get("deadLetterReason"):
                rec["deadLetterReason"] = r["deadLetterReason"]
            out.append(rec)
        return {"executions": out, "nextPageToken": I.make_token(kind, f"{org}/{ns}/{query or ''}", last)}

    @routed
    async def history(self, org: str, ns: str, wid: str, rid: str | None, after: int, reverse: bool,
                      size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        names.check_id(wid, "workflowId")
        with self.svc.read_txn(org, ns) as txn:
            r = _run(txn, org, ns, wid, rid)
            bound = f"{org}/{ns}/{r['runId']}/{int(reverse)}"
            cursor = I.read_token(token, "history", bound)
            if cursor is not None:
                after = I.token_int(cursor)
            events, nxt = reads.history(txn, org, ns, r["runId"], after, reverse, size, r["historyLength"])
        return {
            "events": [render.event(e) for e in events],
            "nextPageToken": I.make_token("history", bound, str(nxt).encode() if nxt else None),
            "nextCursor": nxt or 0,
        }

    @routed
    async def executions(self, org: str, ns: str, wid: str, size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        names.check_id(wid, "workflowId")
        with self.svc.read_txn(org, ns) as txn:
            runs = reads.runs_of(txn, org, ns, wid)
        if not runs:
            raise ApiError("not_found", f"workflow {wid} not found")
        bound = f"{org}/{ns}/{wid}"
        cursor = I.read_token(token, "executions", bound)
        start = I.token_int(cursor) if cursor else 0
        page = runs[start : start + size]
        more = start + size < len(runs)
        return {
            "executions": [render.run(r, full=False) for r in page],
            "nextPageToken": I.make_token("executions", bound, str(start + size).encode() if more else None),
        }


def _run(txn: Any, org: str, ns: str, wid: str, rid: str | None) -> Json:
    """The run (the latest of the workflow id without ``rid``), or 404."""
    r = reads.run(txn, org, ns, wid, rid)
    if r is None:
        raise ApiError("not_found", f"workflow {wid} not found")
    return r
