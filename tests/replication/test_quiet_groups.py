"""Quiet groups (``raft.idle_after``): a group with no write or read for a while
heartbeats slowly, its followers hold elections for 3 idle heartbeats, and the
first write or read ends it. Three in-process replicators on loopback (real
sockets, real LMDB), with short idle timings.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from hanzo_tasks.replication.raft.group import IDLE_ELECTION_FACTOR

from tests.replication.raft_trio import ELECTION_MS, Trio

IDLE_AFTER_MS, IDLE_HEARTBEAT_MS = 800, 400
QUIET = {"idle_after_ms": IDLE_AFTER_MS, "idle_heartbeat_ms": IDLE_HEARTBEAT_MS}


def trio(tmp: Path) -> Trio:
    return Trio(tmp, partitions=1, opts={nid: dict(QUIET) for nid in ("a", "b", "c")})


def sent(t: Trio) -> int:
    return sum(g.transport.sent for r in t.reps.values() for g in r._groups.values())


def terms(t: Trio) -> list[int]:
    return [g.raftCurrentTerm for r in t.reps.values() for g in r._groups.values()]


async def until_idle(t: Trio) -> None:
    await t.wait(lambda: all(r._groups[g].idle_heartbeat or r._groups[g].quiet
                             for r in t.reps.values() for g in r._groups), 10.0, "every group idle")


def test_an_idle_group_heartbeats_slowly_without_elections_and_keeps_its_quorum(tmp_path: Path) -> None:
    async def scenario() -> dict[str, Any]:
        t = trio(tmp_path)
        await t.start("a", "b", "c")
        try:
            await t.wait_leader(0)
            await t.register(0)
            t0, s0 = time.monotonic(), sent(t)
            await asyncio.sleep(1.0)
            busy_rate = (sent(t) - s0) / (time.monotonic() - t0)
            await until_idle(t)
            before = terms(t)
            t0, s0 = time.monotonic(), sent(t)
            await asyncio.sleep(3.0)  # several idle heartbeats, longer than any busy election timeout
            idle_rate = (sent(t) - s0) / (time.monotonic() - t0)
            return {"busy": busy_rate, "idle": idle_rate, "same_terms": terms(t) == before,
                    "quorum": [r.sees_quorum(g) for r in t.reps.values() for g in r._groups],
                    "leaders": [t.leader(g) for g in range(2)]}
        finally:
            await t.stop_all()

    out = asyncio.run(scenario())
    assert out["same_terms"], "an idle group held an election"
    assert all(out["quorum"]), out
    assert all(out["leaders"]), out
    assert out["idle"] < out["busy"] / 4, f"idle {out['idle']:.1f} msgs/s against busy {out['busy']:.1f}"


def test_the_first_write_wakes_an_idle_group_at_once(tmp_path: Path) -> None:
    async def scenario() -> tuple[float, bool, list[Any]]:
        t = trio(tmp_path)
        await t.start("a", "b", "c")
        try:
            lead = await t.wait_leader(0)
            await t.register(0)
            await until_idle(t)
            t0 = time.monotonic()
            res = await t.reps[lead].propose(0, t.command())
            took = time.monotonic() - t0
            await t.caught_up(0)
            await asyncio.sleep(0.2)
            states = [(r._groups[0].idle_heartbeat, r._groups[0].quiet) for r in t.reps.values()]
            return took, bool(res.get("ok")), states
        finally:
            await t.stop_all()

    took, ok, states = asyncio.run(scenario())
    assert ok
    assert took < IDLE_HEARTBEAT_MS / 1000, f"the write waited {took:.3f} s for an idle heartbeat"
    assert all(s == (0.0, 0.0) for s in states), f"the group stayed idle after a write: {states}"


def test_followers_of_a_silent_idle_leader_wait_out_the_quiet_window_then_elect(tmp_path: Path) -> None:
    """The leader goes silent with its links up (a pause, a one-way partition): no
    closed link hurries the followers (see test_lost_leader), the quiet window holds."""

    async def scenario() -> tuple[float, str, str]:
        t = trio(tmp_path)
        await t.start("a", "b", "c")
        try:
            old = await t.wait_leader(0)
            await t.register(0)
            await until_idle(t)
            await asyncio.sleep(0.1)
            t0 = time.monotonic()
            mux = t.reps[old].mux
            assert mux is not None
            mux.send = lambda *args, **kwargs: True  # type: ignore[method-assign]  # frames vanish
            new = await t.wait(lambda: next((n for n in t.ids if n != old and t.reps[n].is_leader(0)), None),
                               15.0, "a new leader among the others")
            took = time.monotonic() - t0
            assert (await t.propose(0, t.command()))["ok"]
            return took, old, new
        finally:
            await t.stop_all()

    took, old, new = asyncio.run(scenario())
    assert new != old
    quiet = IDLE_ELECTION_FACTOR * IDLE_HEARTBEAT_MS / 1000
    # the followers held their elections (a busy group elects within about 2 x ELECTION_MS) ...
    assert took > quiet - IDLE_HEARTBEAT_MS / 1000, f"elected after {took:.2f} s, inside the quiet window"
    # ... and no longer than the quiet window plus an election
    assert took < quiet + 4 * ELECTION_MS / 1000 + 1.0, f"elected after {took:.2f} s"
