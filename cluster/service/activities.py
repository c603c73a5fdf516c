"""Standalone activities (SPEC §4.8): start, describe, complete, fail, cancel,
heartbeat, list and their own history.
"""

from __future__ import annotations

import logging
from typing import Any

from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service.forwarding import Concept, routed
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard import reads

log = logging.getLogger("tasks.service")

Json = dict[str, Any]


class Activities(Concept):
    """Standalone activities: the activities half of a node's service."""

    attr = "activities"

    @routed
    async def start_activity(self, org: str, ns: str, body: Json) -> Json:
        await self.svc.prepare(org, ns, rate_limited=True)
        aid = I.opt_str(body, "activityId")
        if not aid:
            raise I.bad("activityId is required")
        spec: Json = {"activityId": names.check_id(aid, "activityId"),
                      "type": I.name_obj(body, "activityType", required=True)}
        rid = I.opt_str(body, "runId")
        if rid:
            spec["runId"] = names.check_run_id(rid)
        tq = body.get("taskQueue", "default")
        if isinstance(tq, dict):
            tq = I.name_obj(body, "taskQueue", required=False) or "default"
        if not isinstance(tq, str) or not tq:
            raise I.bad("taskQueue must be a string")
        spec["taskQueue"] = names.check_id(tq, "taskQueue")
        if "input" in body:
            spec["input"] = I.payload(body, "input", self.svc.max_payload)
        rp = I.retry_policy(body.get("retryPolicy"))
        if rp is not None:
            spec["retryPolicy"] = rp
        for f in ("scheduleToCloseTimeout", "scheduleToStartTimeout", "startToCloseTimeout", "heartbeatTimeout"):
            ms = I.opt_duration(body, f, lo_ms=0)
            if ms:
                spec[f] = ms
        ident = I.opt_str(body, "identity")
        if ident:
            spec["identity"] = ident
        req = I.request_id(body)
        if req:
            spec["requestId"] = req
        res = await self.svc.propose(org, ns, "act.start", start=spec,
                                 defaultStartToClose=self.svc.cfg.timeouts.activity_start_to_close)
        out = render.activity(res["activity"])
        out["started"] = res["started"]
        return out

    async def _activity_op(self, op: str, org: str, ns: str, aid: str, rid: str, **fields: Any) -> Json:
        await self.svc.prepare(org, ns, rate_limited=op == "act.start")
        names.check_id(aid, "activityId")
        names.check_run_id(rid)
        res = await self.svc.propose(org, ns, op, activityId=aid, runId=rid, **fields)
        return render.activity(res["activity"])

    @routed
    async def describe_activity(self, org: str, ns: str, aid: str, rid: str) -> Json:
        await self.svc.prepare(org, ns)
        names.check_id(aid, "activityId")
        names.check_run_id(rid)
        with self.svc.read_txn(org, ns) as txn:
            return render.activity(_activity(txn, org, ns, aid, rid))

    @routed
    async def cancel_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        return await self._activity_op("act.cancel", org, ns, aid, rid, reason=I.opt_str(body, "reason") or "",
                                       identity=I.opt_str(body, "identity") or "")

    @routed
    async def complete_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        return await self._activity_op("act.complete", org, ns, aid, rid,
                                       result=I.payload(body, "result", self.svc.max_payload),
                                       identity=I.opt_str(body, "identity") or "")

    @routed
    async def fail_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        cause = I.opt_str(body, "cause")
        if not cause:
            raise I.bad("cause is required")
        nr = I.opt_bool(body, "nonRetryable")
        return await self._activity_op("act.fail", org, ns, aid, rid, cause=cause,
                                       failure={"message": cause, "type": "", "nonRetryable": nr},
                                       identity=I.opt_str(body, "identity") or "")

    @routed
    async def heartbeat_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        return await self._activity_op("act.heartbeat", org, ns, aid, rid,
                                       details=I.payload(body, "details", self.svc.max_payload))

    @routed
    async def list_activities(self, org: str, ns: str, size: int, token: str | None, cursor: str | None) -> Json:
        await self.svc.prepare(org, ns)
        bound = f"{org}/{ns}"
        raw = I.read_token(token, "activities", bound)
        after: tuple[str, str] | None = None
        if raw is not None:
            try:
                aid, _, rid = raw.decode().partition("\x00")
            except UnicodeDecodeError:
                raise I.bad("malformed nextPageToken") from None
            after = (aid, rid)
        elif cursor:
            aid, sep, rid = cursor.partition("|")
            if not sep:
                raise I.bad("cursor must be <activityId>|<runId>")
            after = (names.check_id(aid, "activityId"), names.check_run_id(rid))
        with self.svc.read_txn(org, ns) as txn:
            items, last = reads.list_activities(txn, org, ns, after, size)
        return {
            "activities": [render.activity(a) for a in items],
            "nextPageToken": I.make_token("activities", bound, f"{last[0]}\x00{last[1]}".encode() if last else None),
            "nextCursor": f"{last[0]}|{last[1]}" if last else "",
        }

    @routed
    async def activity_history(self, org: str, ns: str, aid: str, rid: str, after: int, reverse: bool,
                               size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        names.check_id(aid, "activityId")
        names.check_run_id(rid)
        with self.svc.read_txn(org, ns) as txn:
            a = _activity(txn, org, ns, aid, rid)
            bound = f"{org}/{ns}/a/{aid}/{rid}/{int(reverse)}"
            cursor = I.read_token(token, "history", bound)
            if cursor is not None:
                after = I.token_int(cursor)
            events, nxt = reads.activity_history(txn, org, ns, rid, after, reverse, size, a["historyLength"])
        return {
            "events": [render.event(e) for e in events],
            "nextPageToken": I.make_token("history", bound, str(nxt).encode() if nxt else None),
            "nextCursor": nxt or 0,
        }


def _activity(txn: Any, org: str, ns: str, aid: str, rid: str) -> Json:
    """The standalone activity's record, or 404."""
    a = reads.activity(txn, org, ns, aid, rid)
    if a is None:
        raise ApiError("not_found", f"activity {aid} run {rid} not found")
    return a
