"""The scenarios: when to inject which fault, while the workload runs.

A scenario is an async function of a ``ScenarioContext``. It runs alongside
the workload for ``duration`` seconds (the workload keeps going after the
scenario's last heal, so the cluster must serve again before the end), and
must leave every fault healed: the runner heals anything left over anyway.

Timing and choices come from ``ctx.rnd`` (``random.Random(seed)``): a seed
reproduces which node is hit, when, for how long, by what.

With ``--replication-factor`` below ``--nodes`` a partition lives on some
nodes only: whatever concerns "the nodes of partition p" (its leader, a full
node's partitions, a migration's source and destination) comes from the
replica sets the cluster reports (``Testbed.layout``, ``chaos.layout``).
With R >= N every choice is the one made before replica sets existed.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.api import Reply
from chaos.checker import Anomaly
from chaos.faults import (
    ClockSkew,
    Fault,
    FaultRecord,
    IsolateNode,
    KillAll,
    KillNode,
    PauseNode,
    RestartNode,
    RestartNormal,
)
from chaos.history import History
from chaos.layout import Layout, choose_destination, most_loaded
from chaos.nodes import NodeOptions
from chaos.testbed import Testbed

READY_TIMEOUT = 90.0
#: The tiny LMDB map of the disk-full scenario's victim, and the workload
#: payload that fills it within seconds.
TINY_MAP = ["--storage-map-size", "1MiB", "--storage-map-size-max", "1MiB"]
TINY_MAP_BYTES = 1 << 20
DISK_FULL_PAYLOAD = 16_000


@dataclass
class ScenarioContext:
    tb: Testbed
    rnd: random.Random
    duration: float
    history: History
    namespaces: list[str]
    started: float = 0.0  # history time when the workload started
    faults: list[FaultRecord] = field(default_factory=list)
    active: list[Fault] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    anomalies: list[Anomaly] = field(default_factory=list)
    skipped: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    with_migration: bool = False
    """Start a namespace migration right before each fault (``--with-migration``)."""

    def elapsed(self) -> float:
        return self.history.now() - self.started

    async def at(self, t: float) -> None:
        """Sleep until ``t`` seconds after the workload started."""
        delay = t - self.elapsed()
        if delay > 0:
            await asyncio.sleep(delay)

    def warmup(self) -> float:
        return min(max(2.0, 0.2 * self.duration), 10.0)

    def hold(self) -> float:
        return max(2.0, 0.4 * self.duration)

    async def inject(self, fault: Fault) -> Fault:
        fault.record.injected_at = round(self.history.now(), 3)
        self.faults.append(fault.record)
        self.active.append(fault)
        await fault.inject(self.tb)
        return fault

    async def heal(self, fault: Fault, wait_ready: bool = True) -> None:
        if fault not in self.active:
            return
        self.active.remove(fault)
        await fault.heal(self.tb)
        fault.record.healed_at = round(self.history.now(), 3)
        if wait_ready:
            t0 = time.monotonic()
            missing = await self.tb.wait_ready(READY_TIMEOUT)
            if missing:
                fault.record.notes.append(f"not ready {READY_TIMEOUT:.0f}s after heal: {missing}")
            else:
                fault.record.ready_after_s = round(time.monotonic() - t0, 2)

    async def heal_all(self) -> None:
        """Heal whatever is still injected (in reverse order); used by the runner too."""
        for fault in reversed(list(self.active)):
            try:
                await self.heal(fault, wait_ready=False)
            except Exception as e:  # keep healing the others
                self.notes.append(f"heal of {fault.kind} failed: {e}")


Scenario = Callable[[ScenarioContext], Awaitable[None]]


@dataclass(frozen=True)
class ScenarioDef:
    name: str
    doc: str
    run: Scenario
    #: Node id -> options the node *starts* with (before any fault), given the
    #: node ids, the run's rng and the replica sets the cluster will bootstrap
    #: with (None when every node holds every partition, or unknown).
    initial: Callable[[list[str], random.Random, dict[int, list[str]] | None],
                      dict[str, NodeOptions]] | None = None
    payload_bytes: int = 0


async def _one_fault(ctx: ScenarioContext, make: Callable[[], Awaitable[Fault]], hold: float | None = None) -> None:
    await ctx.at(ctx.warmup())
    job = await _migration_in_flight(ctx) if ctx.with_migration else None
    fault = await ctx.inject(await make())
    await ctx.at(ctx.warmup() + (ctx.hold() if hold is None else hold))
    await ctx.heal(fault)
    if job:
        await _finish_migration(ctx, job)


async def _migration_in_flight(ctx: ScenarioContext) -> str | None:
    """Start moving a random namespace to a random other node; the job id (None: not started).

    With R < N, to another *partition*, one whose replica set differs from the
    source's when there is one (``chaos.layout.choose_destination``), so that
    the data changes machines.
    """
    ns = ctx.rnd.choice(ctx.namespaces)
    plan = await _plan_subset_migration(ctx, ns) if not ctx.tb.full_replication else None
    if plan is not None:
        body, where = plan
        to_node = where["to"]
    else:
        to_node = ctx.rnd.choice(ctx.tb.ids)
        body, where = {"toNode": to_node}, {"to": to_node}
    rep = await _start_migration(ctx, ns, body)
    job_id = rep.body.get("id") if rep is not None and rep.ok and isinstance(rep.body, dict) else None
    ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "ns": ns, **where,
                       "answer": rep.brief() if rep is not None else None, "with_fault": True})
    return job_id


async def _plan_subset_migration(ctx: ScenarioContext, ns: str,
                                 layout: Layout | None = None) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """With R < N: (``{"toPartition": dst}``, what to record) for moving ``ns``
    to a partition on other machines; None when the layout is unknown.

    ``to`` in the record is the destination partition's leader (the node a
    ``toNode`` migration would have named), ``from`` the source's.
    """
    tb = ctx.tb
    layout = layout or await tb.layout()
    if layout is None:
        ctx.notes.append(f"migration of {ns}: no node reported the replica sets; migrating with toNode")
        return None
    src = layout.namespaces.get(ns)
    if src is None:
        src = await tb.partition_of_namespace(ns)
    if src is None or src not in layout.replicas:
        ctx.notes.append(f"migration of {ns}: its partition is unknown; migrating with toNode")
        return None
    dst = choose_destination(layout.replicas, src, ctx.rnd)
    if dst is None:
        return None
    _, leaders = await tb.leaders()
    to_node = leaders.get(dst) or ctx.rnd.choice(sorted(layout.replicas[dst]))
    from_node = leaders.get(src) or ctx.rnd.choice(sorted(layout.replicas[src]))
    where = {"from": from_node, "to": to_node, "fromPartition": src, "toPartition": dst,
             "fromReplicas": list(layout.replicas[src]), "toReplicas": list(layout.replicas[dst])}
    return {"toPartition": dst}, where


async def _finish_migration(ctx: ScenarioContext, job_id: str) -> None:
    """Every job ends done or failed (never stuck) once the fault is healed."""
    job = await _wait_job(ctx, job_id, timeout=60.0)
    ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "final": job})
    if job is None or job.get("status") not in ("done", "failed"):
        ctx.notes.append(f"migration {job_id} not finished 60s after heal: {job}")


async def kill_meta_leader(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return KillNode([await ctx.tb.meta_leader(ctx.rnd)], role="meta-leader")
    await _one_fault(ctx, make)


async def kill_partition_leaders(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return KillNode([await ctx.tb.busiest_leader(ctx.rnd)], role="partition-leader")
    await _one_fault(ctx, make)


async def pause_leader(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return PauseNode([await ctx.tb.busiest_leader(ctx.rnd)], role="partition-leader")
    await _one_fault(ctx, make)


async def restart_one(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return RestartNode([ctx.rnd.choice(ctx.tb.ids)])
    await _one_fault(ctx, make, hold=min(ctx.hold(), 3.0))


async def restart_all(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return KillAll(list(ctx.tb.ids))
    await _one_fault(ctx, make, hold=ctx.rnd.uniform(1.0, 3.0))


async def partition_leader(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return IsolateNode([await ctx.tb.busiest_leader(ctx.rnd)], mode="hold")
    await _one_fault(ctx, make)


async def partition_leader_drop(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        return IsolateNode([await ctx.tb.busiest_leader(ctx.rnd)], mode="drop")
    await _one_fault(ctx, make)


async def clock_skew(ctx: ScenarioContext) -> None:
    async def make() -> Fault:
        skew = ctx.rnd.choice((-1, 1)) * ctx.rnd.randint(5, 30) * 1000
        return ClockSkew([await ctx.tb.busiest_leader(ctx.rnd)], skew_ms=skew)
    await _one_fault(ctx, make)


def _tiny_map_victim(ids: list[str], rnd: random.Random,
                     layout: dict[int, list[str]] | None = None) -> dict[str, NodeOptions]:
    """Any node; with R < N one of those holding the most partitions (a node
    with no partition could only fill its meta group)."""
    pool = ids if layout is None else most_loaded(layout, ids)
    return {rnd.choice(pool): NodeOptions(extra_args=list(TINY_MAP))}


def _filled(root: Path, node: str, partitions: int | list[int]) -> list[str]:
    """Partitions of ``node`` whose LMDB file reached the tiny map's size.

    ``partitions``: a partition count (every partition), or the partitions
    ``node`` holds a replica of (R < N); the meta group always.
    """
    held = range(partitions) if isinstance(partitions, int) else partitions
    out = []
    for p in [*(str(i) for i in held), "meta"]:
        try:
            size = (root / node / "partitions" / p / "data.mdb").stat().st_size
        except OSError:
            continue
        if size >= 0.9 * TINY_MAP_BYTES:
            out.append(p)
    return out


async def disk_full(ctx: ScenarioContext) -> None:
    """The victim started with a 1 MiB map; the workload's big payloads fill it.

    While full, the cluster must keep serving through the other replicas,
    and the victim must say ``storage_full`` in its cluster health. Healing
    restarts it with the normal map size, and it must catch up. With R < N
    only the partitions the victim holds a replica of can fill.
    """
    tb = ctx.tb
    victim = next(nid for nid in tb.ids if tb.normal[nid].extra_args != tb.by_id[nid].options.extra_args)
    held: int | list[int] = tb.partitions
    if not tb.full_replication:
        layout = await tb.layout()
        if layout is not None:
            held = layout.partitions_of(victim)
        else:
            ctx.notes.append("disk-full: no node reported the replica sets; watching every partition directory")
    fault = await ctx.inject(RestartNormal([victim], map_size_max=TINY_MAP[-1]))
    if not isinstance(held, int):
        fault.record.params["partitions"] = held
        if not held:
            ctx.notes.append(f"disk-full: {victim} holds no partition replica; only its meta group can fill")
    end = ctx.warmup() + ctx.hold()
    filled_at: float | None = None
    reported_at: float | None = None
    reasons: list[Any] = []
    while ctx.elapsed() < end:
        filled = _filled(tb.root, victim, held)
        if filled and filled_at is None:
            filled_at = round(ctx.elapsed(), 2)
            fault.record.notes.append(f"partitions {filled} of {victim} full at +{filled_at}s")
        health = await tb.health(tb.by_id[victim])
        if health is not None:
            reasons = health.get("reasons") or []
            if any(r.get("reason") == "storage_full" for r in reasons if isinstance(r, dict)):
                if reported_at is None:
                    reported_at = round(ctx.elapsed(), 2)
                    fault.record.notes.append(f"{victim} health reports storage_full at +{reported_at}s")
                if filled_at is not None:
                    break
        await asyncio.sleep(0.5)
    refused = sum(1 for op in ctx.history.ops for a in op.attempts if a.get("status") == 507)
    fault.record.params["writes_refused_507"] = refused
    if filled_at is None and not refused:
        ctx.notes.append("disk-full: the victim's map never filled (nothing to prove)")
    elif reported_at is None:
        ctx.anomalies.append(Anomaly(
            "disk-full", "health-missing-storage-full",
            f"{victim}'s LMDB is full (partitions {_filled(tb.root, victim, held)}, {refused} writes "
            f"answered 507) but GET /v1/tasks/cluster/health never reported storage_full (last reasons: {reasons})",
            {"node": victim},
        ))
    await ctx.at(end)
    await ctx.heal(fault)


async def migration(ctx: ScenarioContext) -> None:
    """A namespace migration in flight during a fault: its source leader or its target is
    killed, or the source is cut off, right after the job starts or before it starts.
    Skipped (not an anomaly) while the server has no migration route."""
    tb, rnd = ctx.tb, ctx.rnd
    await ctx.at(ctx.warmup())
    ns = rnd.choice(ctx.namespaces)
    plan = await _plan_subset_migration(ctx, ns) if not tb.full_replication else None
    if plan is not None:
        # R < N: to another partition, on other machines when possible; the
        # "target" is the destination partition's leader.
        body, where = plan
        source, to_node = where["from"], where["to"]
    else:
        _, leaders = await tb.leaders()
        part = await tb.partition_of_namespace(ns)
        source = leaders.get(part if part is not None else -1) or rnd.choice(tb.ids)
        to_node = rnd.choice([n for n in tb.ids if n != source])
        body, where = {"toNode": to_node}, {"from": source, "to": to_node}
    how = rnd.choice(("kill-source", "kill-target", "isolate-source"))
    when = rnd.choice(("after-start", "before-start"))
    fault: Fault
    if how == "kill-source":
        fault = KillNode([source], role="migration-source", namespace=ns)
    elif how == "kill-target":
        fault = KillNode([to_node], role="migration-target", namespace=ns)
    else:
        fault = IsolateNode([source], mode="hold")
    fault.record.params["when"] = when
    if when == "before-start":
        await ctx.inject(fault)
        await asyncio.sleep(1.0)
    rep = await _start_migration(ctx, ns, body)
    if rep is None or rep.status in (404, 405, 501, 503) and (rep.status != 404 or _no_route(rep)):
        if rep is None or rep.status != 503 or when == "after-start":
            ctx.skipped = "migration not available"
            ctx.notes.append(f"skipped: migration not available ({rep.brief() if rep else 'no answer'})")
            await ctx.heal(fault)
            return
    if when == "after-start":
        await ctx.inject(fault)  # at once: the job is still snapshotting or catching up
    job_id = rep.body.get("id") if rep is not None and rep.ok and isinstance(rep.body, dict) else None
    ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "ns": ns, **where,
                       "answer": rep.brief() if rep is not None else None})
    await ctx.at(ctx.warmup() + ctx.hold())
    await ctx.heal(fault)
    if job_id:
        job = await _wait_job(ctx, job_id, timeout=60.0)
        ctx.events.append({"t": round(ctx.history.now(), 3), "migration": job_id, "final": job})
        if job is None or job.get("status") not in ("done", "failed"):
            ctx.notes.append(f"migration {job_id} not finished 60s after heal: {job}")


async def _start_migration(ctx: ScenarioContext, ns: str, body: dict[str, Any]) -> Reply | None:
    """POST migrate (``{"toNode": n}`` or ``{"toPartition": p}``) on the running nodes in turn,
    through elections (503), for up to ~10 s."""
    rep: Reply | None = None
    for attempt in range(20):
        node = ctx.tb.nodes[attempt % len(ctx.tb.nodes)]
        if not node.running or node.paused:
            continue
        rep = await ctx.tb.api.post(node.spec.http_url, f"/v1/tasks/namespaces/{ns}/migrate", body)
        if rep.status is not None and rep.status != 503:
            return rep
        await asyncio.sleep(0.5)
    return rep


def _no_route(rep: Reply) -> bool:
    msg = rep.body.get("message", "") if isinstance(rep.body, dict) else ""
    return "no route" in msg


async def _wait_job(ctx: ScenarioContext, job_id: str, timeout: float) -> dict[str, Any] | None:
    deadline = time.monotonic() + timeout
    job = None
    while time.monotonic() < deadline:
        for node in ctx.tb.nodes:
            if not node.running:
                continue
            rep = await ctx.tb.api.get(node.spec.http_url, f"/v1/tasks/migrations/{job_id}")
            if rep.ok and isinstance(rep.body, dict):
                job = rep.body
                if job.get("status") in ("done", "failed"):
                    return job
                break
        await asyncio.sleep(0.5)
    return job


#: The menu of ``mixed``: (weight, fault maker). restart-all is rarer: it
#: takes the whole cluster away.
async def _random_fault(ctx: ScenarioContext) -> Fault:
    tb, rnd = ctx.tb, ctx.rnd
    def anyone() -> Awaitable[str]:
        return _const(rnd.choice(tb.ids))

    menu: list[tuple[int, Callable[[], Awaitable[Fault]]]] = [
        (3, lambda: _mk(KillNode, tb.busiest_leader(rnd), role="partition-leader")),
        (2, lambda: _mk(KillNode, tb.meta_leader(rnd), role="meta-leader")),
        (1, lambda: _mk(KillNode, anyone(), role="any")),
        (3, lambda: _mk(PauseNode, tb.busiest_leader(rnd), role="partition-leader")),
        (1, lambda: _mk(PauseNode, anyone(), role="any")),
        (3, lambda: _mk(IsolateNode, tb.busiest_leader(rnd), mode=rnd.choice(("hold", "hold", "drop")))),
        (1, lambda: _mk(IsolateNode, anyone(), mode=rnd.choice(("hold", "drop")))),
        (2, lambda: _mk(RestartNode, anyone())),
        (1, lambda: _mk(ClockSkew, tb.busiest_leader(rnd), skew_ms=rnd.choice((-1, 1)) * rnd.randint(2, 20) * 1000)),
        (1, lambda: _const(KillAll(list(tb.ids)))),
    ]
    weights = [w for w, _ in menu]
    _, make = rnd.choices(menu, weights)[0]
    return await make()


async def _const(x: Any) -> Any:
    return x


async def _mk(cls: Any, target: Awaitable[str], **params: Any) -> Fault:
    fault: Fault = cls([await target], **params)
    return fault


async def mixed(ctx: ScenarioContext) -> None:
    """Random faults from the menu, one at a time, until the last stretch of the run."""
    await ctx.at(ctx.warmup())
    tail = min(10.0, 0.2 * ctx.duration)
    while ctx.elapsed() < ctx.duration - tail - 2.0:
        job = await _migration_in_flight(ctx) if ctx.with_migration and ctx.rnd.random() < 0.5 else None
        fault = await ctx.inject(await _random_fault(ctx))
        hold = ctx.rnd.uniform(1.0, 3.0) if isinstance(fault, KillAll) else ctx.rnd.uniform(2.0, 8.0)
        await asyncio.sleep(min(hold, max(0.5, ctx.duration - tail - ctx.elapsed())))
        await ctx.heal(fault)
        if job:
            await _finish_migration(ctx, job)
        await asyncio.sleep(ctx.rnd.uniform(2.0, 5.0))


SCENARIOS: dict[str, ScenarioDef] = {s.name: s for s in (
    ScenarioDef("kill-meta-leader", "SIGKILL the meta group's leader, restart it", kill_meta_leader),
    ScenarioDef("kill-partition-leaders", "SIGKILL the node leading most partitions, restart it",
                kill_partition_leaders),
    ScenarioDef("pause-leader", "SIGSTOP the node leading most partitions, then SIGCONT", pause_leader),
    ScenarioDef("restart-one", "SIGTERM one random node (clean hand-over), start it again", restart_one),
    ScenarioDef("restart-all", "SIGKILL every node at once, restart them all", restart_all),
    ScenarioDef("partition-leader", "isolate the node leading most partitions from its peers (sockets kept "
                "open), then heal", partition_leader),
    ScenarioDef("partition-leader-drop", "isolate the busiest leader, losing every message; its connections are "
                "reset on heal", partition_leader_drop),
    ScenarioDef("clock-skew", "restart the busiest leader with its clock skewed by +-5..30 s, then without",
                clock_skew),
    ScenarioDef("disk-full", "one node with a 1 MiB LMDB map fills up; the rest keep serving; it restarts "
                "with a normal map and catches up", disk_full, initial=_tiny_map_victim,
                payload_bytes=DISK_FULL_PAYLOAD),
    ScenarioDef("migration", "migrate a namespace; kill its source leader or target, or isolate the source, "
                "mid-flight (skipped when the server has no migration)", migration),
    ScenarioDef("mixed", "random faults from the menu for the whole duration", mixed),
)}
