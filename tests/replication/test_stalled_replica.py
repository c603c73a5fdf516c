"""A storage-stalled replica never keeps its partition leaderless (issue 23, defect 10).

Three in-process replicators on loopback with real LMDB; replica ``c`` has a
1 MiB map that cannot grow, so a few 100 KB runs fill it and it stops applying
(``stalled``), while ``a`` and ``b`` have room. A stalled replica keeps taking
part in Raft (it appends, acknowledges, votes, heartbeats); it only stops
applying. So:

- a stalled leader hands leadership to a caught-up replica and stops saying
  it leads;
- when the stalled replica holds the only up-to-date log (the leader died and
  the other replica was down), it stands for election after a grace period,
  brings the other replica up to date, and hands over to it.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.replication.raft_trio import Trio

SMALL = {"c": {"map_size": 1 << 20, "map_size_max": 1 << 20, "reserve_disk": 0}}
PAD = 100_000


async def _fill_until_stalled(t: Trio, via: str) -> None:
    """Propose 100 KB runs through ``via`` until replica c stops applying."""
    c = t.reps["c"]
    for _ in range(40):
        if 0 in c.stalled:
            return
        res = await t.reps[via].propose(0, t.command(PAD))
        assert res.get("ok") or res.get("code") in ("unavailable", "storage_full"), res
    assert 0 in c.stalled, "replica c never filled up"


async def _stalled_leader(tmp: Path) -> None:
    t = Trio(tmp, opts=SMALL)
    await t.start("a", "b", "c")
    try:
        first = await t.wait_leader(0)
        await t.register(0)
        await t.caught_up(0)
        c = t.reps["c"]
        if first != "c":
            t.reps[first].transfer_leadership(0, "c")
            await t.wait(lambda: t.leader(0) == "c", 10.0, "c to lead")
        await _fill_until_stalled(t, via="a")
        # c can no longer apply: it hands over and says so.
        await t.wait(lambda: not c.is_leader(0), 5.0, "the stalled leader c to stop leading")
        new = await t.wait_leader(0)
        assert new != "c"
        await t.wait(lambda: c.leader(0) == new, 5.0, f"c to report {new} as the leader")
        assert (await t.propose(0, t.command(), via=new))["ok"]
        # It stays a follower that appends and acknowledges, and it does not take over again.
        await asyncio.sleep(1.5)
        assert t.leader(0) == new and c.leader(0) == new
        assert 0 in c.stalled
    finally:
        await t.stop_all()


def test_a_stalled_leader_hands_over_and_stops_claiming_leadership(tmp_path: Path) -> None:
    asyncio.run(_stalled_leader(tmp_path))


async def _only_log_on_the_stalled_replica(tmp: Path) -> None:
    t = Trio(tmp, opts=SMALL)
    await t.start("a", "b")
    try:
        leader = await t.wait_leader(0)
        other = "b" if leader == "a" else "a"
        await t.register(0)
        await t.start("c")
        await t.caught_up(0)
        c = t.reps["c"]
        await t.stop(other)  # down while the log grows: it falls behind
        await _fill_until_stalled(t, via=leader)
        for _ in range(2):  # committed by the leader and the stalled c
            assert (await t.propose(0, t.command(), via=leader))["ok"]
        await t.stop(leader)  # now only c holds every committed entry
        await t.start(other)
        lagging = t.reps[other]
        # c stands, catches the other replica up, and hands over to it.
        await t.wait(lambda: t.leader(0) == other, 20.0, f"{other} to lead group 0")
        await t.wait(lambda: c.leader(0) == other and lagging.leader(0) == other, 5.0, "both to agree")
        assert not c.is_leader(0)
        assert (await t.propose(0, t.command(), via=other))["ok"]
        assert 0 in c.stalled
    finally:
        await t.stop_all()


def test_a_stalled_replica_with_the_only_full_log_does_not_keep_the_partition_leaderless(tmp_path: Path) -> None:
    asyncio.run(_only_log_on_the_stalled_replica(tmp_path))
