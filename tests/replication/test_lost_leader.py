"""A follower whose link to the leader closes (the leader's process died) does not
wait out the election timeout; a link that merely flaps deposes nobody.

Three in-process replicators on loopback (real sockets, real LMDB).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from tests.replication.raft_trio import ELECTION_MS, Trio


def test_followers_elect_at_once_when_the_leaders_links_close(tmp_path: Path) -> None:
    async def scenario() -> list[float]:
        took = []
        for k in range(3):
            t = Trio(tmp_path / str(k), partitions=1)
            await t.start("a", "b", "c")
            try:
                old = await t.wait_leader(0)
                await t.register(0)
                await asyncio.sleep(0.3)
                t0 = time.monotonic()
                await t.stop(old)  # its sockets close, as a killed process's do
                await t.wait_leader(0)
                took.append(time.monotonic() - t0)
            finally:
                await t.stop_all()
        return took

    took = asyncio.run(scenario())
    # Without the closed link's hint the followers wait at least one election timeout.
    assert min(took) < ELECTION_MS / 1000, f"elections took {took} s"


def test_a_follower_whose_link_to_a_live_leader_drops_deposes_nobody(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, list[int], list[int], int]:
        t = Trio(tmp_path, partitions=1)
        await t.start("a", "b", "c")
        try:
            leader = await t.wait_leader(0)
            await t.register(0)
            follower = next(n for n in t.ids if n != leader)
            terms = [r._groups[0].raftCurrentTerm for r in t.reps.values()]
            mux = t.reps[follower].mux
            rounds_before = t.reps[follower]._groups[0].elections.pre_votes_started
            for _ in range(3):  # its outbound link to the leader closes, three times
                conn = mux._out.get(leader)
                if conn is not None:
                    mux._drop_outbound(conn)
                await asyncio.sleep(0.4)
            await asyncio.sleep(1.5)
            after = [r._groups[0].raftCurrentTerm for r in t.reps.values()]
            rounds = t.reps[follower]._groups[0].elections.pre_votes_started - rounds_before
            return leader, t.leader(0) or "", terms, after, rounds
        finally:
            await t.stop_all()

    leader, now, before, after, rounds = asyncio.run(scenario())
    assert rounds >= 1, "the dropped link never started a pre-vote: the case was not exercised"
    assert now == leader and after == before, f"a live leader was deposed: {before} -> {after}"
