"""Schedules (SPEC §4.4, §5.8): create, update, pause, trigger, delete, describe with
the next fire times, list, and matching times.
"""

from __future__ import annotations

import logging
from typing import Any

from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service import schedule_input as S
from hanzo_tasks.cluster.service.forwarding import Concept, routed
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.schedule_spec import jitter_offset
from hanzo_tasks.protocol.timefmt import parse_time
from hanzo_tasks.shard import reads

log = logging.getLogger("tasks.service")

Json = dict[str, Any]


class Schedules(Concept):
    """Schedules: the schedules half of a node's service."""

    attr = "schedules"

    def _schedule_fields(self, body: Json) -> Json:
        return {
            "spec": S.normalize_spec(body.get("spec")),
            "action": S.normalize_action(body.get("action"), self.svc.max_payload),
            "policies": S.normalize_policies(body.get("policies")),
            "state": S.normalize_state(body.get("state")) if body.get("state") is not None else None,
        }

    @routed
    async def create_schedule(self, org: str, ns: str, body: Json, *, upsert: bool) -> Json:
        await self.svc.prepare(org, ns)
        sid = S.check_schedule_id(body.get("scheduleId", body.get("schedule_id")))
        fields = self._schedule_fields(body)
        if fields["state"] is None:
            fields["state"] = S.normalize_state({})
        res = await self.svc.propose(org, ns, "sched.create", scheduleId=sid, upsert=upsert, **fields)
        return self.render_schedule(org, ns, res["schedule"])

    @routed
    async def update_schedule(self, org: str, ns: str, sid: str, body: Json) -> Json:
        await self.svc.prepare(org, ns)
        S.check_schedule_id(sid)
        res = await self.svc.propose(org, ns, "sched.update", scheduleId=sid, **self._schedule_fields(body))
        return self.render_schedule(org, ns, res["schedule"])

    @routed
    async def delete_schedule(self, org: str, ns: str, sid: str) -> Json:
        await self.svc.prepare(org, ns)
        S.check_schedule_id(sid)
        await self.svc.propose(org, ns, "sched.delete", scheduleId=sid)
        return {"status": "deleted"}

    @routed
    async def pause_schedule(self, org: str, ns: str, sid: str, body: Json, paused: bool) -> Json:
        await self.svc.prepare(org, ns)
        S.check_schedule_id(sid)
        await self.svc.propose(org, ns, "sched.pause", scheduleId=sid, paused=paused, note=I.opt_str(body, "note"))
        return {"status": "paused" if paused else "running"}

    @routed
    async def trigger_schedule(self, org: str, ns: str, sid: str, body: Json) -> Json:
        await self.svc.prepare(org, ns, rate_limited=True)
        S.check_schedule_id(sid)
        overlap = body.get("overlapPolicy")
        res = await self.svc.propose(
            org, ns, "sched.trigger", scheduleId=sid, requestId=I.request_id(body),
            overlapPolicy=I.overlap_policy(overlap) if overlap is not None else None,
        )
        out: Json = {"status": res["status"]}
        if res.get("run") is not None:
            out["execution"] = render.run(res["run"])
        return out

    def _load_schedule(self, org: str, ns: str, sid: str) -> Json:
        with self.svc.read_txn(org, ns) as txn:
            s = reads.schedule(txn, org, ns, sid)
        if s is None:
            raise ApiError("not_found", f"schedule {sid} not found")
        return s

    @routed
    async def describe_schedule(self, org: str, ns: str, sid: str) -> Json:
        await self.svc.prepare(org, ns)
        S.check_schedule_id(sid)
        return self.render_schedule(org, ns, self._load_schedule(org, ns, sid))

    def future_times(self, s: Json, count: int = 5) -> list[int]:
        state = s["state"]
        if state.get("paused") or (state.get("limitedActions") and state.get("remainingActions", 0) <= 0):
            return []
        times = S.times_for(s["spec"])
        jitter = S.jitter_ms(s["spec"])
        out: list[int] = []
        cursor = max(s["cursor"], self.svc.clock())
        while len(out) < count:
            nxt = times.next_after(cursor)
            if nxt is None:
                break
            out.append(nxt + jitter_offset(s["scheduleId"], nxt, jitter))
            cursor = nxt
        return out

    def render_schedule(self, org: str, ns: str, s: Json) -> Json:
        status: dict[tuple[str, str], str] = {}
        with self.svc.read_txn(org, ns) as txn:
            for _st, _at, w, r in s["info"]["recent"]:
                run = reads.run(txn, org, ns, w, r)
                if run is not None:
                    status[(w, r)] = run["status"]
        return render.schedule(s, ns, future=self.future_times(s), run_status=status)

    @routed
    async def list_schedules(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        bound = f"{org}/{ns}"
        after = I.read_token(token, "schedules", bound)
        with self.svc.read_txn(org, ns) as txn:
            items, last = reads.list_schedules(txn, org, ns, after, size)
        return {
            "schedules": [self.render_schedule(org, ns, s) for s in items],
            "nextPageToken": I.make_token("schedules", bound, last),
        }

    @routed
    async def matching_times(self, org: str, ns: str, sid: str, q: Any) -> Json:
        await self.svc.prepare(org, ns)
        S.check_schedule_id(sid)
        s = self._load_schedule(org, ns, sid)

        def when(*fields: str) -> int | None:
            for f in fields:
                v = q.get(f)
                if v:
                    try:
                        return parse_time(v)
                    except ValueError as e:
                        raise I.bad(f"{f}: {e}") from None
            return None

        start = when("from", "start")
        if start is None:
            start = self.svc.clock()
        end = when("to", "end")
        if end is None:
            end = start + 24 * 3600 * 1000
        if end < start:
            raise I.bad("to must not be before from")
        times = S.times_for(s["spec"]).between(start, end, 1000)
        return {"matchingTimes": [render.t(x) for x in times]}
