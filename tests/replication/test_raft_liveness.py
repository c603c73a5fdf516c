"""The Raft thread stays alive, or the node stops (issue 23, defect 8).

Three in-process replicators on loopback. An ordinary exception while one
message is handled is logged and contained: that replica keeps replicating
every group. A journal that failed (ENOSPC from the kernel: the journal's file
descriptor is pointed at /dev/full) or a Raft thread that died cannot recover
in-process: the replicator records why (``fatal``), stops claiming any
leadership at once, and the other replicas carry on without it.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from tests.replication.raft_trio import Trio


async def _contained(tmp: Path) -> None:
    t = Trio(tmp, partitions=2)
    await t.start("a", "b", "c")
    try:
        leader = await t.wait_leader(0)
        for g in (0, 1):
            await t.register(g)
        follower = next(n for n in t.ids if n != leader)
        rep = t.reps[follower]
        transport = rep._groups[0].transport
        real = transport.deliver
        raised = []

        def deliver_once_broken(node, msg):  # one message makes the handler raise
            if not raised:
                raised.append(msg["type"])
                raise RuntimeError("injected: a bug while handling one message")
            return real(node, msg)

        transport.deliver = deliver_once_broken
        for _ in range(5):
            for g in (0, 1):
                assert (await t.propose(g, t.command()))["ok"]
        # the broken replica may get its first message after a majority committed all ten
        await t.wait(lambda: raised, 10.0, "the fault being hit")
        # The replica that hit the exception keeps applying both groups.
        for g in (0, 1):
            await t.caught_up(g)
        assert rep._thread is not None and rep._thread.is_alive()
        assert rep.fatal is None
        assert rep.contained_errors == 1
    finally:
        await t.stop_all()


def test_an_exception_handling_one_message_is_contained(tmp_path: Path) -> None:
    asyncio.run(_contained(tmp_path))


def _fail_journal_with_enospc(rep, g: int) -> None:
    """From now on every write of group ``g``'s journal gets ENOSPC from the kernel."""
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        os.dup2(full, rep._journals[g]._fd)
    finally:
        os.close(full)


async def _journal_fails(tmp: Path) -> None:
    t = Trio(tmp, partitions=2)
    await t.start("a", "b", "c")
    try:
        old = await t.wait_leader(0)
        await t.register(0)
        rep = t.reps[old]
        _fail_journal_with_enospc(rep, 0)
        # The next append on the leader cannot be made durable: the proposer
        # is answered at once (outcome unknown), not after the proposal timeout.
        res = await asyncio.wait_for(rep.propose(0, t.command()), 1.0)
        assert res["code"] == "unavailable", res
        # It stops claiming leadership of every group at once ...
        await t.wait(lambda: not any(rep.is_leader(g) for g in range(3)), 5.0, "the old leader to let go")
        assert "journal" in rep.fatal, rep.fatal
        assert all(rep.leader(g) is None for g in range(3))
        assert not rep.raft_thread_alive()
        assert rep.fatal_kind == "journal"
        # ... refuses proposals without waiting ...
        res = await asyncio.wait_for(rep.propose(1, t.command()), 0.5)
        assert res["code"] == "unavailable"
        # ... and the others elect a new leader and keep committing.
        new = await t.wait_leader(0)
        assert new != old
        assert (await t.propose(0, t.command(), via=new))["ok"]
    finally:
        await t.stop_all()


def test_a_journal_that_fails_on_the_leader_is_fatal_and_leadership_is_released(tmp_path: Path) -> None:
    asyncio.run(_journal_fails(tmp_path))


class _Die(BaseException):
    """Not an Exception: nothing on the way may swallow it."""


async def _thread_dies(tmp: Path) -> None:
    t = Trio(tmp, partitions=1)
    await t.start("a", "b", "c")
    try:
        old = await t.wait_leader(0)
        await t.register(0)
        rep = t.reps[old]

        def die() -> None:
            raise _Die("injected: the Raft thread dies")

        rep._inbox.put(("call", die))
        await t.wait(lambda: not rep.is_leader(0), 5.0, "the old leader to let go")
        assert rep.leader(0) is None
        assert "Raft thread" in rep.fatal, rep.fatal
        assert not rep.raft_thread_alive()
        assert rep.fatal_kind == "raft_thread"
        new = await t.wait_leader(0)
        assert new != old
        assert (await t.propose(0, t.command(), via=new))["ok"]
    finally:
        await t.stop_all()


def test_a_dead_raft_thread_is_fatal_and_leadership_is_released(tmp_path: Path) -> None:
    asyncio.run(_thread_dies(tmp_path))


async def _apply_fails(tmp: Path) -> None:
    t = Trio(tmp, partitions=1)
    await t.start("a", "b", "c")
    try:
        leader = await t.wait_leader(0)
        await t.register(0)
        await t.caught_up(0)
        follower = next(n for n in t.ids if n != leader)
        rep = t.reps[follower]
        # Its LMDB environment goes away between two applies (on the Raft thread,
        # as nothing else may touch it): the next apply gets a real lmdb.Error.
        rep._inbox.put(("call", lambda: rep.store(0).env.close()))
        assert (await t.propose(0, t.command()))["ok"]  # committed by the other two
        await t.wait(lambda: rep.fatal is not None, 5.0, "the replica to record its failed apply")
        assert rep.fatal_kind == "apply" and "applying entry" in rep.fatal, rep.fatal
        assert not rep.raft_thread_alive()
        assert (await t.propose(0, t.command(), via=leader))["ok"]
    finally:
        await t.stop_all()


def test_an_apply_that_raises_is_fatal(tmp_path: Path) -> None:
    asyncio.run(_apply_fails(tmp_path))
