"""The timer service: schedule fires on the leader of each shard's partition.

Nothing here is the source of truth. Every due time is recomputed from shard
state (the schedule's spec and its ``cursor``, the last nominal time
processed), so a restart or a new leader simply rebuilds the heap and carries
on. A fire is a proposal keyed by (scheduleId, nominal) and guarded by the
cursor it was computed from; apply ignores a stale or repeated one, which is
what makes "each nominal time fires exactly once" hold across restarts and
failovers.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Any

from hanzo_tasks.cluster.service import schedule_input as S
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.schedule_spec import jitter_offset
from hanzo_tasks.shard import reads

log = logging.getLogger("tasks.timers")

Key = tuple[str, str, str]  # org, ns, scheduleId

MAX_IN_FLIGHT = 256
DEADLINE_SCAN = 0.25
MAX_MISSED_PER_FIRE = 10_000


class ScheduleTimers:
    def __init__(self, service: Any, metrics: Any) -> None:
        self.service = service
        self.metrics = metrics
        self.clock = service.clock
        self._heap: list[tuple[int, int, Key]] = []
        self._due: dict[Key, tuple[int, int]] = {}  # key -> (due, generation)
        self._gen = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._inflight: set[Key] = set()
        self._tasks: set[asyncio.Task] = set()
        self._sem = asyncio.Semaphore(MAX_IN_FLIGHT)
        self._running = False
        self.fires = 0

    def on_membership_change(self, old: Any, new: Any) -> None:
        """Membership changed: recompute what this node is due to fire (cheap, idempotent)."""
        self.rebuild()

    async def start(self) -> None:
        self._running = True
        rep = self.service.replicator
        rep.subscribe(self._on_apply)
        rep.on_leadership(self._on_leadership)
        self.rebuild()
        self._task = asyncio.create_task(self._run(), name="schedule-timers")
        self._deadlines = asyncio.create_task(self._deadline_loop(), name="run-deadlines")

    def wake(self) -> None:
        """Look again at once at what is due (the clock moved, e.g. a test's fake clock)."""
        self._wake.set()

    async def stop(self) -> None:
        self._running = False
        self._wake.set()
        if getattr(self, "_deadlines", None) is not None:
            self._deadlines.cancel()
            try:
                await self._deadlines
            except (asyncio.CancelledError, Exception):
                pass
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # ---- planning ----------------------------------------------------------

    def rebuild(self, only: int | None = None) -> None:
        """Recompute every due time from the state of the partitions this node leads."""
        rep = self.service.replicator
        for p in range(rep.partitions):
            if (only is not None and p != only) or not rep.is_leader(p):
                continue
            with rep.store(p).read() as txn:
                for org, ns in reads.shards(txn):
                    for s in reads.all_schedules(txn, org, ns):
                        self._plan((org, ns, s["scheduleId"]), s)

    def _on_leadership(self, group: int, leading: bool) -> None:
        """A new leader recomputes its timers from shard state; a former one drops them."""
        if group >= self.service.replicator.partitions:
            return
        if leading:
            self.rebuild(only=group)
        else:
            for key in [k for k in self._due if self.service.partition(k[0], k[1]) == group]:
                del self._due[key]

    def _plan(self, key: Key, s: dict[str, Any] | None) -> None:
        self._gen += 1
        if not self.service.replicator.is_leader(self.service.partition(key[0], key[1])):
            self._due.pop(key, None)
            return
        if s is None or s["state"].get("paused"):
            self._due.pop(key, None)
            return
        st = s["state"]
        if st.get("limitedActions") and st.get("remainingActions", 0) <= 0:
            self._due.pop(key, None)
            return
        try:
            nxt = S.times_for(s["spec"]).next_after(s["cursor"])
        except Exception:
            log.exception("schedule %s/%s has an unusable spec", key[1], key[2])
            self._due.pop(key, None)
            return
        if nxt is None:
            self._due.pop(key, None)
            return
        due = nxt + jitter_offset(key[2], nxt, S.jitter_ms(s["spec"]))
        self._due[key] = (due, self._gen)
        heapq.heappush(self._heap, (due, self._gen, key))
        self._wake.set()

    def replan(self, key: Key) -> None:
        org, ns, sid = key
        with self.service.read_txn(org, ns) as txn:
            s = reads.schedule(txn, org, ns, sid)
        self._plan(key, s)

    def _on_apply(self, group: int, index: int, result: dict[str, Any]) -> None:
        if result.get("pin") is not None:  # a migration flipped (the service saw it first)
            self.rebuild(only=result["pin"][2])
        for ev in result.get("_events", ()):
            if ev["kind"] == "shard.activated":  # a migrated shard arrived: plan its schedules
                self.rebuild(only=group)
                continue
            sid = ev.get("schedule_id")
            if sid is None or ev["kind"] == "schedule.fired":
                continue
            key = (ev["org"], ev["namespace"], sid)
            if key not in self._inflight:
                self.replan(key)

    # ---- run timers (timeouts, cancel sweeps) --------------------------------

    def _due_timers(self, scan: Any, now: int) -> list[tuple[str, str, int, str, str, str]]:
        """Due durable timers (``scan`` = a reads.due_* index) of the partitions this node leads."""
        rep = self.service.replicator
        out = []
        for p in range(rep.partitions):
            if not rep.is_leader(p):
                continue
            with rep.store(p).read() as txn:
                for org, ns in reads.shards(txn):
                    for at, kind, ident, rid in scan(txn, org, ns, now, 256):
                        out.append((org, ns, at, kind, ident, rid))
        return out

    def _due_deadlines(self, now: int) -> list[tuple[str, str, int, str, str, str]]:
        return self._due_timers(reads.due_deadlines, now)

    def _due_activity_timers(self, now: int) -> list[tuple[str, str, int, str, str, str]]:
        return self._due_timers(reads.due_activity_timers, now)

    async def _deadline_loop(self) -> None:
        """Run timeouts, execution timeouts and cancel sweeps of the partitions this node leads.

        The timers are shard state (an index by due time); each fire is keyed by
        (run, kind, due time), so a new leader simply finds them and a repeated
        fire is a no-op.
        """
        while self._running:
            try:
                for org, ns, at, kind, wid, rid in self._due_deadlines(self.clock()):
                    try:
                        await self.service.propose(org, ns, "wf.deadline", workflowId=wid, runId=rid, kind=kind, at=at)
                    except ApiError as e:
                        log.warning("run timer %s of %s/%s not recorded: %s", kind, ns, wid, e.message)
                for org, ns, at, kind, aid, rid in self._due_activity_timers(self.clock()):
                    try:
                        await self.service.propose(org, ns, "act.timeout", activityId=aid, runId=rid, kind=kind, at=at)
                    except ApiError as e:
                        log.warning("activity timer %s of %s/%s not recorded: %s", kind, ns, aid, e.message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("run timers failed")
            await asyncio.sleep(DEADLINE_SCAN)

    # ---- firing ------------------------------------------------------------

    async def _run(self) -> None:
        while self._running:
            self._wake.clear()
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                due, gen, key = heapq.heappop(self._heap)
                if self._due.get(key) != (due, gen) or key in self._inflight:
                    continue
                del self._due[key]
                self._inflight.add(key)
                t = asyncio.create_task(self._fire(key))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)
            timeout = None
            if self._heap:
                timeout = max(0.0, (self._heap[0][0] - self.clock()) / 1000.0)
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _fire(self, key: Key) -> None:
        org, ns, sid = key
        retry = False
        try:
            async with self._sem:
                if not self.service.replicator.is_leader(self.service.partition(org, ns)):
                    return
                with self.service.read_txn(org, ns) as txn:
                    s = reads.schedule(txn, org, ns, sid)
                if s is None:
                    return
                times = S.times_for(s["spec"])
                after = s["cursor"]
                nominal = times.next_after(after)
                if nominal is None:
                    return
                now = self.clock()
                catchup = s["policies"]["catchupWindow"]
                missed = 0
                # Times far outside the catch-up window are counted, not fired one by one.
                while now - nominal > catchup and missed < MAX_MISSED_PER_FIRE:
                    n2 = times.next_after(nominal)
                    if n2 is None or now - n2 <= catchup:
                        break
                    nominal = n2
                    missed += 1
                jitter = jitter_offset(sid, nominal, S.jitter_ms(s["spec"]))
                res = await self.service.propose(
                    org, ns, "sched.fire", scheduleId=sid, after=after, nominal=nominal, missed=missed,
                    cancelAckMs=self.service.cfg.timeouts.cancel_ack,
                )
                outcome = res.get("outcome")
                self.fires += 1
                if outcome in ("started", "skipped_overlap", "buffered", "missed_catchup", "paused", "dropped"):
                    self.metrics.schedule_fires.labels(outcome).inc()
                if outcome == "started":
                    self.metrics.fire_lateness.observe(max(0.0, (self.clock() - nominal - jitter) / 1000.0))
        except ApiError as e:
            log.warning("schedule %s/%s fire failed: %s", ns, sid, e.message)
            retry = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("schedule %s/%s fire failed", ns, sid)
            retry = True
        finally:
            self._inflight.discard(key)
        if not self._running:
            return
        if retry:
            await asyncio.sleep(1.0)
        for delay in (0.0, 1.0, 5.0, 30.0):
            if delay:
                await asyncio.sleep(delay)
            if not self._running:
                return
            try:
                self.replan(key)
                return
            except Exception:
                log.exception("replan of %s failed; retrying", key)

