"""Committed entries applied in batches, one LMDB write transaction each (issue 14).

A follower RaftGroup (pysyncobj with our overrides) on a real DurableJournal and
a real LMDB store is fed AppendEntries by hand, as a leader would send them, and
ticked: each tick applies what became committed. The reference is the same
command stream applied entry by entry through ``StateMachine.apply``. Write
transactions are counted with LMDB's own transaction id, so a test fails when
batching is off where it should be on.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.replication.raft.faults import InjectedFault
from hanzo_tasks.replication.raft.group import (
    REGULAR,
    ApplyFailed,
    GroupTransport,
    RaftGroup,
    membership_command,
)
from hanzo_tasks.replication.raft.journal import DurableJournal
from hanzo_tasks.replication.raft.snapshots import LmdbSnapshotter
from hanzo_tasks.shard import PartitionStore, StateMachine, encode
from hanzo_tasks.shard.txn import Txn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pysyncobj import SyncObjConf
from pysyncobj.config import FAIL_REASON

from tests.shard.test_machine import command_streams

NOOP = b"\x01"  # pysyncobj's no-op entry (a new leader's first entry)
MiB = 1 << 20


def _start(i: int, pad: str = "") -> bytes:
    return encode({"v": 1, "op": "wf.start", "org": "_", "ns": "default", "now": 1_700_000_000_000 + i,
                   "rnd": f"{i:032x}", "start": {"type": "T", "workflowId": f"w{i}", "input": pad}})


REGISTER = encode({"v": 1, "op": "ns.register", "org": "_", "ns": "default", "now": 1_700_000_000_000,
                   "rnd": "0" * 32})


class Follower:
    """A follower group of one partition whose leader ("l1") is this test."""

    def __init__(self, tmp: Path, machine: Callable[[PartitionStore], StateMachine] = StateMachine, *,
                 map_size: int = 64 * MiB, map_size_max: int = 1024 * MiB) -> None:
        self.store = PartitionStore(tmp / "p", map_size=map_size, map_size_max=map_size_max, sync=False)
        self.journal = DurableJournal(str(tmp / "p.journal"), sync=False)
        snap = LmdbSnapshotter(self.store, tmp / "p.snapshot")
        conf = SyncObjConf(autoTick=False, raftMinTimeout=60.0, raftMaxTimeout=120.0, connectionTimeout=120.0,
                           appendEntriesUseBatch=True, appendEntriesBatchSizeBytes=1 << 24,
                           dynamicMembershipChange=True, useFork=False, journalFile=self.journal,
                           fullDumpFile=str(snap.path), serializer=print, deserializer=print,
                           logCompactionMinEntries=1_000_000, logCompactionMinTime=1e9)
        self.notified: list[tuple[int, Any]] = []  # what the replicator's listeners would hear

        def transport(sync_obj: Any, self_node: Any, other_nodes: Any) -> GroupTransport:
            return GroupTransport(sync_obj, self_node, other_nodes, send=lambda peer, body: True,
                                  flush=lambda: None)

        self.machine = machine(self.store)
        self.grp = RaftGroup(0, "f", ["l1"], conf, self.machine, transport,
                             lambda g, i, r: self.notified.append((i, r)), snap)
        self.leader = self.grp.nodes["l1"]
        self.grp.transport.node_up(self.leader)
        self.last = self.grp.last_log_index()  # 1: pysyncobj's initial entry

    def append(self, commands: list[bytes], term: int = 1) -> list[int]:
        """The leader sends ``commands`` (nothing newly committed); their indexes."""
        first = self.last + 1
        entries = [[c, first + k, term] for k, c in enumerate(commands)]
        self._send(entries, self.grp.raftCommitIndex)
        return [e[1] for e in entries]

    def commit(self, upto: int) -> None:
        """The leader says everything up to ``upto`` is committed; one tick applies it."""
        self._send([], upto)
        self.grp._onTick(0)

    def _send(self, entries: list[list[Any]], commit: int) -> None:
        prev_term = self.grp._SyncObj__raftLog[-1][2]
        self.grp.deliver(self.leader, {"type": "append_entries", "term": 1, "commit_index": commit,
                                       "prevLogIdx": self.last, "prevLogTerm": prev_term, "entries": entries})
        self.last += len(entries)
        assert self.grp.last_log_index() == self.last

    def wait(self, idx: int, answers: list[tuple[int, Any, Any]], term: int = 1) -> None:
        """Register a caller waiting for entry ``idx`` (what pysyncobj does for a leader's proposal)."""
        subs = self.grp._SyncObj__commandsWaitingCommit.setdefault(idx, [])
        subs.append((term, lambda res, err: answers.append((idx, res, err))))

    def txns(self) -> int:
        """Write transactions committed in this store so far (LMDB's transaction id)."""
        txnid: int = self.store.env.info()["last_txnid"]
        return txnid

    def close(self) -> None:
        self.journal.close()
        self.store.close()


def _plain(results: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
    return [(i, None if r is None else dict(r)) for i, r in results]


# ---- batches give what entry-by-entry apply gives ----------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=command_streams(), cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=8),
       noops=st.lists(st.integers(min_value=0, max_value=40), max_size=3))
def test_batches_cut_anywhere_give_the_store_of_entry_by_entry_apply(
        stream: list[dict[str, Any]], cuts: list[int], noops: list[int]) -> None:
    commands = [REGULAR + encode(c) for c in stream]
    for at in sorted(set(noops), reverse=True):
        commands.insert(min(at, len(commands)), NOOP)  # a no-op folds into the batch around it
    with tempfile.TemporaryDirectory() as tmp:
        reference = StateMachine(PartitionStore(f"{tmp}/ref", sync=False))
        f = Follower(Path(tmp) / "f")
        indexes = f.append(commands)
        expected = [(i, reference.apply(i, c[1:])) for i, c in zip(indexes, commands, strict=True)
                    if c[:1] == REGULAR]
        ends = sorted({min(c, len(commands)) for c in cuts} | {len(commands)})
        batches = 0
        for end in ends:
            before = f.grp.raftLastApplied
            f.commit(indexes[end - 1])
            assert f.grp.raftLastApplied == indexes[end - 1]
            applied_now = commands[before - indexes[0] + 1 : end]
            batches += any(c[:1] == REGULAR for c in applied_now)
        assert f.txns() == batches, "each tick's committed entries must be one write transaction"
        assert _plain(f.notified) == _plain(expected)
        assert f.store.content_hash() == reference.store.content_hash()
        assert f.store.applied_index() == reference.store.applied_index()
        f.close()
        reference.store.close()


def test_one_tick_applies_its_committed_entries_in_one_transaction(tmp_path: Path) -> None:
    f = Follower(tmp_path)
    indexes = f.append([REGULAR + REGISTER] + [REGULAR + _start(i) for i in range(1, 100)])
    f.commit(indexes[-1])
    assert f.txns() == 1, "batching is off: one transaction per entry"
    assert f.grp.raftLastApplied == indexes[-1] == f.store.applied_index()
    assert len(f.notified) == 100 and all(r["ok"] for _, r in f.notified)
    f.close()


def test_entries_per_entry_when_the_batch_bound_is_one(tmp_path: Path) -> None:
    f = Follower(tmp_path)
    f.grp.apply_batch_entries = 1
    indexes = f.append([REGULAR + REGISTER] + [REGULAR + _start(i) for i in range(1, 10)])
    f.commit(indexes[-1])
    assert f.txns() == 10
    f.close()


def test_a_batch_is_cut_at_its_entry_and_byte_bounds(tmp_path: Path) -> None:
    f = Follower(tmp_path)
    f.grp.apply_batch_entries = 32
    indexes = f.append([REGULAR + REGISTER] + [REGULAR + _start(i) for i in range(1, 100)])
    f.commit(indexes[-1])
    assert f.txns() == 4  # 100 entries, 32 a batch
    f.grp.apply_batch_bytes = 250_000
    indexes = f.append([REGULAR + _start(i, pad="x" * 100_000) for i in range(100, 110)])
    f.commit(indexes[-1])
    assert f.txns() == 4 + 5  # two 100 kB entries a batch
    assert f.grp.raftLastApplied == indexes[-1] == f.store.applied_index()
    f.close()


def test_a_membership_entry_ends_the_batch_and_is_applied_alone(tmp_path: Path) -> None:
    f = Follower(tmp_path)
    indexes = f.append([REGULAR + REGISTER, REGULAR + _start(1), membership_command("add", "n2"),
                        REGULAR + _start(2), REGULAR + _start(3)])
    f.commit(indexes[-1])
    assert f.txns() == 2  # the entries before the change, and those after it
    assert "n2" in f.grp.member_ids()
    assert f.grp.raftLastApplied == indexes[-1] == f.store.applied_index()
    assert [i for i, _ in f.notified] == [indexes[0], indexes[1], indexes[3], indexes[4]]
    f.close()


def test_callers_are_answered_in_index_order_after_the_commit_with_the_term_check(tmp_path: Path) -> None:
    f = Follower(tmp_path)
    indexes = f.append([REGULAR + REGISTER] + [REGULAR + _start(i) for i in range(1, 6)])
    answers: list[tuple[int, Any, Any]] = []
    seen_applied: list[int] = []
    for idx in reversed(indexes):
        f.wait(idx, answers)
    # Whoever is answered sees its entry durable in the store already.
    f.grp._SyncObj__commandsWaitingCommit[indexes[2]].append(
        (1, lambda res, err: seen_applied.append(f.store.applied_index())))
    f.wait(indexes[3], answers, term=0)  # proposed in another term: its entry was replaced
    f.commit(indexes[-1])
    assert f.txns() == 1
    assert [a[0] for a in answers] == sorted(a[0] for a in answers)
    assert seen_applied == [indexes[-1]]
    by_idx: dict[int, list[tuple[Any, Any]]] = {}
    for idx, res, err in answers:
        by_idx.setdefault(idx, []).append((res, err))
    assert all(err == FAIL_REASON.SUCCESS and res["ok"] for res, err in by_idx[indexes[1]])
    assert (None, FAIL_REASON.DISCARDED) in by_idx[indexes[3]]
    assert len(answers) == len(indexes) + 1
    f.close()


# ---- the map's limit, a stall, a deferred resize --------------------------------


def test_a_stall_in_the_middle_of_a_batch_stops_at_that_entry_and_a_retry_applies_the_rest_once(
        tmp_path: Path) -> None:
    """At the map's maximum the batch ends exactly where entry-by-entry apply
    would: the entries that fit are applied (and answered), the first that does
    not fit stalls the replica with nothing of it or after it written, and the
    retry, once there is room, applies each remaining entry exactly once."""
    f = Follower(tmp_path, map_size=MiB, map_size_max=MiB)
    pad = "x" * 200_000
    commands = [REGULAR + REGISTER] + [REGULAR + _start(i, pad) for i in range(1, 9)]  # ~1.6 MB > 1 MiB
    indexes = f.append(commands)
    answers: list[tuple[int, Any, Any]] = []
    for idx in indexes:
        f.wait(idx, answers)
    f.commit(indexes[-1])
    stalled_at = f.grp.raftLastApplied + 1
    assert f.grp.stall is not None and str(stalled_at) in str(f.grp.stall)
    assert indexes[1] < stalled_at <= indexes[-1], "the stall must fall inside the batch"
    assert f.store.applied_index() == stalled_at - 1
    assert [a[0] for a in answers] == list(range(indexes[0], stalled_at))
    assert [i for i, _ in f.notified] == list(range(indexes[0], stalled_at))
    hash_at_stall = f.store.content_hash()

    f.commit(indexes[-1])  # within the retry interval: nothing is tried
    assert f.grp.raftLastApplied == stalled_at - 1 and f.store.content_hash() == hash_at_stall

    f.store.map_size_max = 64 * MiB  # room is made (the operator raised the limit)
    f.grp._stall_retry_at = time.monotonic()  # the retry is due
    f.commit(indexes[-1])
    assert f.grp.stall is None
    assert f.grp.raftLastApplied == indexes[-1] == f.store.applied_index()
    assert [a[0] for a in answers] == indexes, "every caller answered once, in order"
    assert [i for i, _ in f.notified] == indexes
    assert f.machine.applied_ops["wf.start"] == 8, "an entry was applied twice"
    reference = StateMachine(PartitionStore(tmp_path / "ref", sync=False))
    for idx, c in zip(indexes, commands, strict=True):
        reference.apply(idx, c[1:])
    assert f.store.content_hash() == reference.store.content_hash()
    reference.store.close()
    f.close()


def test_a_resize_deferred_by_a_snapshot_copy_applies_nothing_until_the_copy_ends(tmp_path: Path) -> None:
    f = Follower(tmp_path, map_size=MiB)
    indexes = f.append([REGULAR + REGISTER] + [REGULAR + _start(i, "y" * 200_000) for i in range(1, 9)])
    pin = f.store.pin_read()  # a snapshot image is being copied: the map cannot grow
    try:
        f.commit(indexes[-1])
        assert f.grp.raftLastApplied == indexes[0] - 1 and f.store.applied_index() == 0
        assert f.txns() == 0 and f.grp.stall is None and not f.notified
    finally:
        pin.close()
    f.commit(indexes[-1])  # the next tick retries the whole batch, the map grows
    assert f.grp.raftLastApplied == indexes[-1] == f.store.applied_index()
    assert f.txns() == 1 and f.store.map_grows >= 1
    f.close()


# ---- a failure names its entry ----------------------------------------------


class FailingMachine(StateMachine):
    """Fails with an I/O-like error (not a business rule) at one log index,
    inside the write transaction, as an LMDB or disk error would."""

    fail_at = 0

    def _apply_one(self, txn: Txn, index: int, data: bytes) -> tuple[Any, str]:
        if index == self.fail_at:
            raise InjectedFault(f"entry {index}")
        return super()._apply_one(txn, index, data)


def test_a_failure_in_a_batch_names_the_entry_that_failed(tmp_path: Path) -> None:
    f = Follower(tmp_path, FailingMachine)
    indexes = f.append([REGULAR + REGISTER] + [REGULAR + _start(i) for i in range(1, 10)])
    answers: list[tuple[int, Any, Any]] = []
    for idx in indexes:
        f.wait(idx, answers)
    bad = indexes[6]
    f.machine.fail_at = bad  # type: ignore[attr-defined]
    with pytest.raises(ApplyFailed) as failed:
        f.commit(indexes[-1])
    assert failed.value.index == bad and failed.value.group_id == 0
    assert isinstance(failed.value.__cause__, InjectedFault)
    # What entry-by-entry apply would have done before failing: the entries before it.
    assert f.grp.raftLastApplied == bad - 1 == f.store.applied_index()
    assert [a[0] for a in answers] == list(range(indexes[0], bad))
    f.close()


def test_a_failure_of_a_single_entry_after_a_noop_names_that_entry(tmp_path: Path) -> None:
    f = Follower(tmp_path, FailingMachine)
    indexes = f.append([REGULAR + REGISTER])
    f.commit(indexes[-1])
    indexes = f.append([NOOP, REGULAR + _start(1)])
    f.machine.fail_at = indexes[1]  # type: ignore[attr-defined]
    with pytest.raises(ApplyFailed) as failed:
        f.commit(indexes[-1])
    assert failed.value.index == indexes[1]
    assert f.grp.raftLastApplied == indexes[0]  # the no-op before it counts, as entry by entry
    f.close()

