"""Raft membership changes of one group (issue 23, defects 6 and 7).

In-process RaftReplicators on loopback sockets, real LMDB, real pysyncobj:

- a second membership change is refused while the first is not committed
  (pysyncobj's own guard reads an index nothing sets);
- ``change_membership`` returns only once the change committed, and raises
  when it cannot commit (it used to count a change appended locally as done);
- a replica drops its copy only once a leader confirms its removal committed
  (a layout recorded for an uncommitted removal used to make it delete its log
  and store while still a voter);
- a targeted hand-over reaches a voter added after the group was created.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.replication.raft.group import membership_command
from hanzo_tasks.replication.raft.replicator import RaftReplicator
from pysyncobj.config import FAIL_REASON

from tests.replication.test_no_pickle import _free_ports, cmd


def make(tmp: Path, ids: list[str], addrs: dict[str, str], secret: bytes, nid: str,
         peers: list[str] | None = None) -> RaftReplicator:
    known = {p: addrs[p] for p in (peers or ids)}
    return RaftReplicator(tmp / nid, node_id=nid, listen=addrs[nid], peers=known, secret=secret, partitions=1,
                          sync=False, election_timeout_ms=300, heartbeat_interval_ms=50, propose_timeout_ms=3000)


async def until(what: Callable[[], Any], timeout: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = what()
        if isinstance(got, Awaitable):
            got = await got
        if got:
            return got
        await asyncio.sleep(step)
    raise AssertionError(f"not within {timeout} s")


async def leader_of(reps: dict[str, RaftReplicator], g: int = 0, timeout: float = 10.0) -> RaftReplicator:
    return await until(lambda: next((r for r in reps.values() if r._running and r.is_leader(g)), None), timeout)


async def write(reps: dict[str, RaftReplicator], i: int) -> None:
    for _ in range(100):
        rep = await leader_of(reps)
        res = await rep.propose(0, cmd(i, "ns.register"))
        if res.get("ok") or res.get("code") not in ("unavailable",):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("no write committed")


async def started(tmp: Path, ids: list[str], extra: list[str] = ()) -> tuple[dict[str, RaftReplicator], dict]:
    secret = secrets.token_bytes(32)
    addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip([*ids, *extra], _free_ports(len(ids) + len(extra)),
                                                     strict=True)}
    reps = {nid: make(tmp, ids, addrs, secret, nid) for nid in ids}
    for r in reps.values():
        await r.start()
    await write(reps, 0)
    return reps, {"addrs": addrs, "secret": secret}


async def stop_all(reps: dict[str, RaftReplicator]) -> None:
    for r in reps.values():
        await r.stop()


def test_a_second_membership_change_is_refused_until_the_first_committed(tmp_path: Path) -> None:
    async def run() -> list[int]:
        reps, _ = await started(tmp_path, ["a", "b", "c"])
        try:
            leader = await leader_of(reps)
            loop = asyncio.get_running_loop()
            futs = [loop.create_future() for _ in range(2)]

            def both() -> None:  # on the Raft thread: both reach pysyncobj in the same tick
                grp = leader._groups[0]
                for fut, node in zip(futs, ("x", "y"), strict=True):
                    grp._applyCommand(membership_command("add", node),
                                      lambda res, err, f=fut: loop.call_soon_threadsafe(f.set_result, err))

            leader._inbox.put(("call", both))
            return list(await asyncio.wait_for(asyncio.gather(*futs), 5.0))
        finally:
            await stop_all(reps)

    first, second = asyncio.run(run())
    assert first == FAIL_REASON.SUCCESS
    assert second == FAIL_REASON.REQUEST_DENIED  # two changes in flight: majorities that need not overlap


def test_change_membership_returns_only_once_the_change_committed(tmp_path: Path) -> None:
    async def run() -> tuple[float, BaseException | None]:
        reps, _ = await started(tmp_path, ["a", "b", "c"])
        try:
            leader = await leader_of(reps)
            down = next(r for r in reps.values() if r is not leader)
            await down.stop()  # {a, b, c} + x needs 3 of 4 votes: two are left, nothing commits
            t0 = time.monotonic()
            try:
                await leader.change_membership("add", "x", groups=[0], timeout=5.5)
            except TimeoutError as e:
                return time.monotonic() - t0, e
            return time.monotonic() - t0, None
        finally:
            await stop_all(reps)

    took, err = asyncio.run(run())
    assert isinstance(err, TimeoutError), f"returned after {took:.1f} s as if the change had committed"
    assert took < 8.0


def test_a_replica_drops_its_copy_only_once_its_removal_committed(tmp_path: Path) -> None:
    async def run() -> dict[str, Any]:
        reps, _ = await started(tmp_path, ["a", "b", "c"])
        out: dict[str, Any] = {}
        try:
            leader = await leader_of(reps)
            victim = next(r for r in reps.values() if r is not leader)
            rest = tuple(n for n in reps if n != victim.node_id)
            store_dir = victim.store(0).path
            # A layout recorded for a removal that never committed (or was truncated).
            victim.set_replica_sets({0: rest})
            await asyncio.sleep(2.0)
            out["kept_while_voter"] = 0 in victim._groups and Path(store_dir).exists()
            out["serves_after_layout"] = victim.is_local(0)
            await write(reps, 1)
            await leader.change_group_membership(0, "rem", victim.node_id, timeout=10.0)
            await until(lambda: 0 not in victim._groups, 10.0)
            out["dropped_after_commit"] = not Path(store_dir).exists()
            return out
        finally:
            await stop_all(reps)

    out = asyncio.run(run())
    assert out["kept_while_voter"], "the replica deleted its log and store while still a voter"
    assert not out["serves_after_layout"]  # reads go to the recorded replicas meanwhile
    assert out["dropped_after_commit"]


def test_a_targeted_hand_over_reaches_a_voter_added_later(tmp_path: Path) -> None:
    """The added voter ("a") sorts first: pysyncobj's own pick (``transferLeadership(None)``)
    takes the most caught-up follower with the highest id, never it."""
    async def run() -> list[str | None]:
        reps, env = await started(tmp_path, ["b", "c", "d"], extra=["a"])
        addrs, secret = env["addrs"], env["secret"]
        late = make(tmp_path, ["a", "b", "c", "d"], addrs, secret, "a")
        await late.start()
        late._inbox.put(("call", lambda: late._groups[0].hold_elections(3600.0)))  # let the old voters lead
        for r in reps.values():
            r.set_peer_addresses(addrs)
        reps["a"] = late
        try:
            leader = await leader_of(reps)
            await leader.change_membership("add", "a", groups=[0], timeout=10.0)
            await write(reps, 1)
            leaders: list[str | None] = []
            deadline = time.monotonic() + 10.0
            while time.monotonic() < deadline:
                cur = await leader_of(reps)
                if not leaders or leaders[-1] != cur.node_id:
                    leaders.append(cur.node_id)
                if cur.node_id == "a":
                    break
                cur.transfer_leadership(0, "a")
                await asyncio.sleep(0.3)
            return leaders
        finally:
            await stop_all(reps)

    leaders = asyncio.run(run())
    assert leaders[-1] == "a", leaders
    assert len(leaders) == 2, f"leadership went elsewhere first: {leaders}"


@pytest.fixture(autouse=True)
def _quiet_pysyncobj() -> None:
    import logging

    logging.getLogger("pysyncobj").setLevel(logging.ERROR)
