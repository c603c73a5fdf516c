"""DurableJournal: pysyncobj's Journal interface, on real files, through crashes.

A "crash" in these tests closes the journal's file descriptor without flushing
or closing the journal (what a killed process leaves behind); the subprocess
test kills a real writer with SIGKILL.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

import hypothesis.strategies as st
import msgpack
import pysyncobj.syncobj
import pytest
from hanzo_tasks.replication.raft.journal import (
    HEADER_SIZE,
    REC_HEADER_SIZE,
    DurableJournal,
    JournalClosedError,
    JournalCorruptError,
    JournalFailedError,
)
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import FileJournal, Journal, MemoryJournal
from pysyncobj.node import Node
from pysyncobj.transport import Transport

REPO = Path(__file__).resolve().parents[2]


# ---- helpers -----------------------------------------------------------------


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "raft.journal")


def crash(journal: DurableJournal) -> None:
    """Drop the journal as a killed process would: buffered changes are lost."""
    fd = journal._fd
    assert fd is not None
    os.close(fd)
    journal._fd = None


def entries(n: int, *, first: int = 1, term: int = 1, size: int = 10) -> list[tuple[bytes, int, int]]:
    return [(b"cmd-%d-" % i + b"x" * (i % size), i, term) for i in range(first, first + n)]


def filled(path: str, items: list[tuple[bytes, int, int]], **kwargs: Any) -> DurableJournal:
    journal = DurableJournal(path, **kwargs)
    for e in items:
        journal.add(*e)
    return journal


def record_size(entry: tuple[bytes, int, int]) -> int:
    return REC_HEADER_SIZE + len(entry[0])


def record_offset(items: list[tuple[bytes, int, int]], position: int) -> int:
    return HEADER_SIZE + sum(record_size(e) for e in items[:position])


class SyscallCounter:
    """Counts os.fsync / os.write calls while still performing them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fsync = 0
        self.write = 0
        real_fsync, real_write = os.fsync, os.write

        def fsync(fd: int) -> None:
            self.fsync += 1
            real_fsync(fd)

        def write(fd: int, data: Any) -> int:
            self.write += 1
            return real_write(fd, data)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "write", write)

    def reset(self) -> None:
        self.fsync = self.write = 0


# ---- the interface -----------------------------------------------------------


def test_is_a_pysyncobj_journal(path: str) -> None:
    with DurableJournal(path) as journal:
        assert isinstance(journal, Journal)


def test_round_trip_matches_memory_journal(path: str) -> None:
    items = entries(12)
    items[3] = (b"", 4, 1)  # an empty command is a valid command
    memory = MemoryJournal()
    journal = DurableJournal(path)
    for command, idx, term in items:
        memory.add(command, idx, term)
    journal.add(bytearray(items[0][0]), 1, 1)  # bytes-like commands are stored as bytes
    for command, idx, term in items[1:]:
        journal.add(memoryview(command) if idx % 2 else command, idx, term)

    assert len(journal) == len(memory) == 12
    for i in range(-12, 12):
        assert journal[i] == memory[i]
        assert type(journal[i]) is tuple and type(journal[i][0]) is bytes
    for s in (slice(None), slice(2, 5), slice(3, None), slice(None, -2), slice(0, 1), slice(7, 100),
              slice(20, None), slice(-3, None), slice(None, None, 2)):
        assert journal[s] == memory[s]
    with pytest.raises(IndexError):
        journal[12]
    journal._destroy()


def test_reopen_restores_entries_term_vote_and_commit_index(path: str) -> None:
    items = entries(50, size=200)
    journal = filled(path, items)
    journal.setCurrentTerm(7, "10.0.0.2:4321")
    journal.setRaftCommitIndex(42)
    journal._destroy()

    with DurableJournal(path) as reopened:
        assert reopened[:] == items
        assert reopened.getCurrentTerm() == 7
        assert reopened.getVotedForNodeId() == "10.0.0.2:4321"
        assert reopened.getRaftCommitIndex() == 42
        assert not reopened.dirty


def test_new_journal_defaults_match_file_journal(path: str) -> None:
    with DurableJournal(path) as journal:
        assert len(journal) == 0
        assert journal.getCurrentTerm() == 0
        assert journal.getVotedForNodeId() is None
        assert journal.getRaftCommitIndex() == 1


@pytest.mark.parametrize("voted", [None, "n1:1", 3, b"\x00id"])
def test_vote_survives_a_crash_once_flushed(path: str, voted: Any) -> None:
    journal = DurableJournal(path)
    journal.setCurrentTerm(1, "other")
    journal.flush()
    journal.setCurrentTerm(2, voted)
    assert journal.dirty
    journal.flush()
    crash(journal)
    with DurableJournal(path) as reopened:
        assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (2, voted)


def test_unflushed_changes_are_lost_by_a_crash_and_nothing_else(path: str) -> None:
    items = entries(10)
    journal = filled(path, items[:6])
    journal.setCurrentTerm(3, "a")
    journal.flush()
    for e in items[6:]:
        journal.add(*e)
    journal.setCurrentTerm(4, "b")
    crash(journal)
    with DurableJournal(path) as reopened:
        assert reopened[:] == items[:6]
        assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (3, "a")


def test_commit_index_is_lazy_and_persisted_by_the_one_second_timer(path: str) -> None:
    journal = filled(path, entries(10))
    journal.flush()
    journal.setRaftCommitIndex(8)
    assert not journal.dirty  # a commit index alone is no reason to fsync
    journal.onOneSecondTimer()
    journal.setRaftCommitIndex(9)  # not persisted before the crash: the older value is safe
    crash(journal)
    with DurableJournal(path) as reopened:
        assert reopened.getRaftCommitIndex() == 8


def test_commit_index_never_points_past_the_log(path: str) -> None:
    journal = filled(path, entries(5))
    journal.setRaftCommitIndex(100)
    journal._destroy()
    with DurableJournal(path) as reopened:
        assert reopened.getRaftCommitIndex() == 5
    journal = DurableJournal(path)
    journal.clear()
    journal._destroy()
    with DurableJournal(path) as reopened:
        assert reopened.getRaftCommitIndex() == 1


def test_one_second_timer_syncs_the_log_before_the_commit_index(path: str) -> None:
    journal = filled(path, entries(10))
    journal.setRaftCommitIndex(10)
    journal.onOneSecondTimer()  # persists commit index 10: entries 1..10 must be on disk first
    assert not journal.dirty
    crash(journal)
    with DurableJournal(path) as reopened:
        assert len(reopened) == 10 and reopened.getRaftCommitIndex() == 10


def test_invalid_arguments_are_refused_before_touching_the_log(path: str) -> None:
    with DurableJournal(path) as journal:
        with pytest.raises(TypeError):
            journal.add("text", 1, 1)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            journal.add(b"x", -1, 1)
        with pytest.raises(ValueError):
            journal.add(b"x", 1, 2**64)
        with pytest.raises(TypeError):
            journal.setCurrentTerm(1, object())  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            journal.setCurrentTerm(-1, None)
        assert len(journal) == 0 and not journal.dirty


def test_closed_journal_refuses_writes_but_flush_is_harmless(path: str) -> None:
    journal = filled(path, entries(3))
    journal._destroy()
    journal._destroy()  # idempotent
    journal.flush()  # closing flushed everything
    assert journal.closed and journal[:] == entries(3)
    with pytest.raises(JournalClosedError):
        journal.add(b"x", 4, 1)


# ---- recovery ----------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 3, REC_HEADER_SIZE - 1, REC_HEADER_SIZE, REC_HEADER_SIZE + 5])
def test_torn_tail_is_dropped_and_appends_continue(path: str, cut: int) -> None:
    items = entries(8, size=40)
    filled(path, items)._destroy()
    size = os.path.getsize(path)
    last = record_size(items[-1])
    assert cut < last
    os.truncate(path, size - cut)

    journal = DurableJournal(path)
    assert journal[:] == items[:-1]
    assert journal.recovered_dropped_bytes == last - cut
    assert os.path.getsize(path) == size - last  # truncated to the last good record
    journal.add(b"again", 8, 2)
    journal._destroy()
    with DurableJournal(path) as reopened:
        assert reopened[:] == items[:-1] + [(b"again", 8, 2)]


@pytest.mark.parametrize(
    "garbage",
    [b"\x00", b"\x00" * 100, random.Random(7).randbytes(7), random.Random(300).randbytes(300),
     # a plausible record header announcing more bytes than the file holds
     (0).to_bytes(4, "little") + (10**6).to_bytes(4, "little") + bytes(16)],
)
def test_garbage_tail_is_dropped(path: str, garbage: bytes) -> None:
    items = entries(5)
    filled(path, items)._destroy()
    size = os.path.getsize(path)
    with open(path, "ab") as f:
        f.write(garbage)
    with DurableJournal(path) as journal:
        assert journal[:] == items
        assert journal.recovered_dropped_bytes == len(garbage)
    assert os.path.getsize(path) == size


@pytest.mark.parametrize("where", ["crc", "length", "idx", "term", "command"])
def test_corrupt_record_in_the_middle_stops_recovery_there(path: str, where: str) -> None:
    items = entries(10)
    filled(path, items)._destroy()
    at = record_offset(items, 4) + {"crc": 0, "length": 4, "idx": 8, "term": 16, "command": 26}[where]
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0x40]))
    with DurableJournal(path) as journal:
        assert journal[:] == items[:4]
        journal.add(*items[4])
    with DurableJournal(path) as journal:
        assert journal[:] == items[:5]


def test_stale_record_behind_a_rewritten_one_is_not_resurrected(tmp_path: Path) -> None:
    """A crash after truncate + append can leave old records behind new ones; the crc chain rejects them."""
    old, new = str(tmp_path / "old"), str(tmp_path / "new")
    old_items = [(b"aaaa", 1, 1), (b"bbbb", 2, 1), (b"cccc", 3, 1)]
    new_items = [(b"aaaa", 1, 1), (b"BBBB", 2, 2)]  # same sizes: 3 would line up exactly
    filled(old, old_items)._destroy()
    filled(new, new_items)._destroy()
    old_bytes, new_bytes = Path(old).read_bytes(), Path(new).read_bytes()
    Path(new).write_bytes(new_bytes + old_bytes[len(new_bytes):])
    with DurableJournal(new) as journal:
        assert journal[:] == new_items


def test_empty_or_headerless_file_is_a_new_journal(path: str) -> None:
    Path(path).write_bytes(b"")
    with DurableJournal(path) as journal:
        assert len(journal) == 0
        journal.add(b"x", 1, 1)
    with DurableJournal(path) as journal:
        assert journal[:] == [(b"x", 1, 1)]


def test_foreign_files_are_refused_not_overwritten(path: str) -> None:
    journal = FileJournal(path)  # pysyncobj's own format
    journal.add(b"x", 1, 1)
    journal.setCurrentTerm(1, None)
    journal._destroy()
    before = Path(path).read_bytes()
    with pytest.raises(JournalCorruptError):
        DurableJournal(path)
    assert Path(path).read_bytes() == before


def test_corrupt_meta_is_refused(path: str) -> None:
    journal = DurableJournal(path)
    journal.setCurrentTerm(3, "n")
    journal._destroy()
    Path(path + ".meta").write_bytes(b"\xc1 not msgpack")
    with pytest.raises(JournalCorruptError):
        DurableJournal(path)
    Path(path + ".meta").write_bytes(msgpack.packb({"v": 1, "term": "3", "votedFor": None, "commitIndex": 1}))
    with pytest.raises(JournalCorruptError):
        DurableJournal(path)


def test_leftover_temporaries_are_ignored_and_removed(path: str) -> None:
    items = entries(4)
    journal = filled(path, items)
    journal.setCurrentTerm(2, "n")
    journal._destroy()
    Path(path + ".compact").write_bytes(b"half a compaction")
    Path(path + ".meta.tmp").write_bytes(b"half a meta")
    with DurableJournal(path) as journal:
        assert journal[:] == items and journal.getCurrentTerm() == 2
    assert not os.path.exists(path + ".compact") and not os.path.exists(path + ".meta.tmp")


# ---- truncation, compaction, clear -------------------------------------------


@pytest.mark.parametrize("flushed", [0, 5, 10])
def test_delete_entries_from_then_add_then_reopen(path: str, flushed: int) -> None:
    """Truncation inside the written file, at its end, and inside the unflushed buffer."""
    items = entries(10)
    journal = filled(path, items[:flushed])
    journal.flush()
    for e in items[flushed:]:
        journal.add(*e)
    journal.deleteEntriesFrom(7)  # a list position, as SyncObj passes it
    replacement = [(b"new-8", 8, 2), (b"new-9", 9, 2)]
    for e in replacement:
        journal.add(*e)
    journal.flush()
    assert journal[:] == items[:7] + replacement
    crash(journal)
    with DurableJournal(path) as reopened:
        assert reopened[:] == items[:7] + replacement


def test_delete_entries_to_compacts_the_file_and_survives_reopen(path: str) -> None:
    items = entries(200, size=100)
    journal = filled(path, items)
    journal.flush()
    big = os.path.getsize(path)
    journal.add(b"unflushed", 201, 1)
    journal.deleteEntriesTo(190)
    assert journal[:] == items[190:] + [(b"unflushed", 201, 1)]
    assert os.path.getsize(path) < big / 10
    assert not journal.dirty  # the rewrite made everything durable, the new entry included
    crash(journal)
    with DurableJournal(path) as reopened:
        assert reopened[:] == items[190:] + [(b"unflushed", 201, 1)]
        reopened.add(b"more", 202, 1)
        reopened.deleteEntriesFrom(5)  # offsets are right after a rewrite
        reopened.add(b"other", 196, 3)
    with DurableJournal(path) as reopened:
        assert reopened[:] == items[190:195] + [(b"other", 196, 3)]


def test_crash_during_compaction_keeps_the_old_log(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    items = entries(20)
    journal = filled(path, items)
    journal.flush()

    def replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError):
        journal.deleteEntriesTo(15)
    monkeypatch.undo()
    assert journal.failed
    with pytest.raises(JournalFailedError):
        journal.add(b"x", 21, 1)
    journal._destroy()
    with DurableJournal(path) as reopened:
        assert reopened[:] == items


def test_clear_then_reopen(path: str) -> None:
    items = entries(10)
    journal = filled(path, items)
    journal.setCurrentTerm(5, "n")
    journal.flush()
    journal.clear()
    assert len(journal) == 0 and journal.dirty
    journal.flush()
    crash(journal)
    with DurableJournal(path) as reopened:
        assert len(reopened) == 0
        assert reopened.getCurrentTerm() == 5  # clear empties the log, not the meta
        assert os.path.getsize(path) == HEADER_SIZE
        reopened.add(b"snapshot-entry", 41, 4)
        reopened.add(b"snapshot-entry2", 42, 4)
    with DurableJournal(path) as reopened:
        assert reopened[:] == [(b"snapshot-entry", 41, 4), (b"snapshot-entry2", 42, 4)]


# ---- flush costs ---------------------------------------------------------------


def test_flush_of_a_clean_journal_makes_no_syscall(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = filled(path, entries(3))
    journal.setCurrentTerm(1, "n")
    journal.flush()
    calls = SyscallCounter(monkeypatch)
    assert not journal.dirty
    for _ in range(100):
        journal.flush()
    journal.setRaftCommitIndex(3)
    journal.setCurrentTerm(1, "n")  # unchanged: nothing to persist
    journal.flush()
    assert (calls.fsync, calls.write) == (0, 0)
    journal._destroy()


def test_flush_batches_many_adds_into_one_write_and_one_fsync(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = DurableJournal(path)
    calls = SyscallCounter(monkeypatch)
    for e in entries(500):
        journal.add(*e)
    assert journal.dirty and (calls.fsync, calls.write) == (0, 0)  # add never touches the disk
    journal.flush()
    assert (calls.fsync, calls.write) == (1, 1)

    calls.reset()
    journal.setCurrentTerm(2, "n")
    journal.flush()
    assert calls.fsync == 2  # the meta temp file and its directory; the log was clean

    calls.reset()
    journal.add(b"x", 501, 2)
    journal.setCurrentTerm(3, None)
    journal.flush()
    assert calls.fsync == 3  # log, meta, directory

    calls.reset()
    journal.deleteEntriesFrom(400)
    journal.flush()
    assert calls.fsync == 1  # a truncation is made durable like an append
    journal._destroy()


def test_nosync_never_fsyncs_but_loses_nothing_on_a_process_crash(
    path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = SyscallCounter(monkeypatch)
    items = entries(30)
    journal = filled(path, items, sync=False)
    journal.setCurrentTerm(4, "n")
    journal.setRaftCommitIndex(20)
    journal.flush()
    journal.deleteEntriesTo(10)
    journal.onOneSecondTimer()
    journal.deleteEntriesFrom(15)
    journal.flush()
    crash(journal)
    assert calls.fsync == 0
    with DurableJournal(path, sync=False) as reopened:
        assert reopened[:] == items[10:25]
        assert (reopened.getCurrentTerm(), reopened.getRaftCommitIndex()) == (4, 20)


def test_a_failed_fsync_fails_the_journal(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    journal = filled(path, entries(3))

    def fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError):
        journal.flush()
    monkeypatch.undo()
    assert journal.failed
    with pytest.raises(JournalFailedError):
        journal.flush()  # never pretend the data is durable after a failed fsync
    with pytest.raises(JournalFailedError):
        journal.setCurrentTerm(9, None)
    assert journal[:] == entries(3)  # reads still work
    journal._destroy()  # closes without writing
    assert journal.closed
    with pytest.raises(JournalFailedError):
        journal.flush()


# ---- model-based: DurableJournal against MemoryJournal -------------------------


def _clamped(commit: int, items: list[tuple[bytes, int, int]]) -> int:
    return min(commit, items[-1][1] if items else 1)


class JournalMachine(RuleBasedStateMachine):
    """Random operations, reopens and crashes; the journal must always match the model.

    Besides MemoryJournal (entries, term, vote), the model tracks what a
    process crash would leave on disk: the entries at the last durability
    point (flush, compaction, close), cut by every truncation since; the
    term/vote of the last meta write; and the commit index last persisted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="journal-sm-")
        self.path = os.path.join(self.dir, "j")
        self.journal = DurableJournal(self.path)
        self.model = MemoryJournal()
        self.commit = 1
        self.disk: list[tuple[bytes, int, int]] = []
        self.disk_len = 0
        self.disk_term: tuple[int, Any] = (0, None)
        self.disk_commit = 1
        self.meta_dirty = False

    def teardown(self) -> None:
        self.journal._destroy()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _term(self) -> tuple[int, Any]:
        return self.model.getCurrentTerm(), self.model.getVotedForNodeId()

    def _all_durable(self) -> None:
        self.disk = self.model[:]
        self.disk_len = len(self.disk)

    def _meta_written(self) -> None:
        self.disk_term = self._term()
        self.disk_commit = self.commit
        self.meta_dirty = False

    def _reset_model(self, items: list[tuple[bytes, int, int]], term: tuple[int, Any]) -> None:
        self.model = MemoryJournal()
        for e in items:
            self.model.add(*e)
        self.model.setCurrentTerm(*term)

    @rule(command=st.binary(max_size=48), term_step=st.integers(0, 2), first=st.integers(0, 2**64 - 1))
    def add(self, command: bytes, term_step: int, first: int) -> None:
        if len(self.model):
            idx, term = self.model[-1][1] + 1, self.model[-1][2] + term_step
        else:
            idx, term = first, term_step
        if idx >= 2**64 or term >= 2**64:
            return
        self.journal.add(command, idx, term)
        self.model.add(command, idx, term)

    @rule(position=st.integers(-3, 14))
    def delete_entries_from(self, position: int) -> None:
        self.journal.deleteEntriesFrom(position)
        self.model.deleteEntriesFrom(position)
        self.disk_len = min(self.disk_len, len(self.model))

    @rule(position=st.integers(-3, 14))
    def delete_entries_to(self, position: int) -> None:
        rewrites = slice(position, None).indices(len(self.model))[0] > 0
        self.journal.deleteEntriesTo(position)
        self.model.deleteEntriesTo(position)
        if rewrites:
            self._all_durable()

    @rule()
    def clear(self) -> None:
        self.journal.clear()
        self.model.clear()
        self.disk_len = 0

    @rule(term=st.integers(0, 6), voted=st.sampled_from([None, "n1:1", "n2:2", 7, b"raw"]))
    def set_current_term(self, term: int, voted: Any) -> None:
        if (term, voted) != self._term():
            self.meta_dirty = True
        self.journal.setCurrentTerm(term, voted)
        self.model.setCurrentTerm(term, voted)

    @rule(commit=st.integers(0, 60))
    def set_commit_index(self, commit: int) -> None:
        self.journal.setRaftCommitIndex(commit)
        self.commit = commit

    @rule()
    def flush(self) -> None:
        self.journal.flush()
        assert not self.journal.dirty
        self._all_durable()
        if self.meta_dirty:
            self._meta_written()

    @rule()
    def one_second_timer(self) -> None:
        self.journal.onOneSecondTimer()
        if self.meta_dirty or self.commit != self.disk_commit:
            self._all_durable()
            self._meta_written()

    @rule()
    def reopen(self) -> None:
        self.journal._destroy()
        self._all_durable()
        self._meta_written()
        self.journal = DurableJournal(self.path)
        self.commit = _clamped(self.disk_commit, self.model[:])

    @rule()
    def crash_and_reopen(self) -> None:
        crash(self.journal)
        self.journal = DurableJournal(self.path)
        self._reset_model(self.disk[: self.disk_len], self.disk_term)
        self._all_durable()
        self.meta_dirty = False
        self.commit = _clamped(self.disk_commit, self.disk)

    @invariant()
    def matches_model(self) -> None:
        assert len(self.journal) == len(self.model)
        assert self.journal[:] == self.model[:]
        if len(self.model):
            assert self.journal[-1] == self.model[-1]
            assert self.journal[0] == self.model[0]
        assert self.journal.getCurrentTerm() == self.model.getCurrentTerm()
        assert self.journal.getVotedForNodeId() == self.model.getVotedForNodeId()
        assert self.journal.getRaftCommitIndex() == self.commit


TestJournalMachine = JournalMachine.TestCase
TestJournalMachine.settings = settings(
    max_examples=100,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


# ---- a real writer killed with SIGKILL -------------------------------------------

_WRITER = r"""
import sys
from hanzo_tasks.replication.raft.journal import DurableJournal

journal = DurableJournal(sys.argv[1])
idx = journal[-1][1] if len(journal) else 0
term = journal.getCurrentTerm()
while True:
    for _ in range(7):
        idx += 1
        journal.add(b"cmd-%d-" % idx + b"x" * (idx * 37 % 700), idx, term)
    if idx % 70 == 0:
        term += 1
        journal.setCurrentTerm(term, "n1")
    if len(journal) > 300:
        journal.deleteEntriesTo(len(journal) - 40)
    journal.flush()
    print(idx, term, flush=True)
"""


def _expected_command(idx: int) -> bytes:
    return b"cmd-%d-" % idx + b"x" * (idx * 37 % 700)


def test_sigkill_mid_write_loses_nothing_that_was_flushed(tmp_path: Path) -> None:
    path = str(tmp_path / "crash.journal")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    highest = (0, 0)
    for round_, lines_before_kill in enumerate((40, 170, 90)):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, path], stdout=subprocess.PIPE, env=env, cwd=REPO)
        assert proc.stdout is not None
        printed: list[tuple[int, int]] = []
        deadline = time.monotonic() + 10
        while len(printed) < lines_before_kill and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            printed.append(tuple(map(int, line.split())))  # type: ignore[arg-type]
        os.kill(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate(timeout=10)
        printed += [tuple(map(int, line.split())) for line in rest.splitlines() if line.strip()]  # type: ignore[misc]
        assert printed, f"round {round_}: the writer printed nothing (rc={proc.returncode})"
        last_idx, last_term = printed[-1]

        with DurableJournal(path) as journal:
            idxs = [e[1] for e in journal]
            assert idxs == list(range(idxs[0], idxs[0] + len(idxs)))
            assert all(command == _expected_command(idx) for command, idx, _ in journal)
            # everything flushed is there; at most the batch being written when killed is extra
            assert last_idx <= idxs[-1] <= last_idx + 7
            assert journal.getCurrentTerm() >= last_term
            assert (last_idx, last_term) > highest
            highest = (last_idx, last_term)


# ---- integration: a single-node pysyncobj group on the journal ---------------------


class _NoNetwork(Transport):
    """A transport for a group of one: there is never anyone to send to."""

    def send(self, node: Node, message: dict[str, Any]) -> bool:
        raise AssertionError(f"a single-node group sent {message!r}")


@contextmanager
def journal_injected(journal: Journal) -> Iterator[None]:
    """Have ``SyncObj.__init__`` use ``journal``: it builds its journal by calling
    ``pysyncobj.syncobj.createJournal(conf.journalFile)``, so replace that name for
    the duration of the constructor only."""
    with mock.patch.object(pysyncobj.syncobj, "createJournal", lambda _journal_file: journal):
        yield


class _Group(SyncObj):
    MARK = b"\xaa"  # not one of pysyncobj's command types: it never unpickles these

    def __init__(self, journal: DurableJournal) -> None:
        self.journal = journal
        self.applied: list[bytes] = []
        conf = SyncObjConf(
            autoTick=False, appendEntriesPeriod=0.005, raftMinTimeout=0.02, raftMaxTimeout=0.04,
            dynamicMembershipChange=False,
        )
        with journal_injected(journal):
            super().__init__(Node("n1"), [], conf=conf, nodeClass=Node, transportClass=_NoNetwork)

    def _SyncObj__doApplyCommand(self, command: bytes) -> None:  # noqa: N802 - pysyncobj's hook
        if command[:1] == self.MARK:
            self.applied.append(command[1:])

    def tick_until(self, done: Any, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            self.journal.flush()  # what the integrator does before every tick
            self.doTick(0.0)
            time.sleep(0.002)


def test_syncobj_single_node_group_round_trip(path: str) -> None:
    journal = DurableJournal(path)
    group = _Group(journal)
    group.tick_until(group._isLeader)
    results: list[tuple[Any, int]] = []
    commands = [msgpack.packb({"op": "add", "n": i}) for i in range(3)]
    for c in commands:
        group._applyCommand(_Group.MARK + c, lambda res, err: results.append((res, err)))
    group.tick_until(lambda: len(results) == 3)
    assert [err for _, err in results] == [FAIL_REASON.SUCCESS] * 3
    assert group.applied == commands
    term = group._getTerm()
    log_before = journal[:]
    group.destroy()  # autoTick=False: destroys now, closing the journal
    assert journal.closed

    reopened = DurableJournal(path)
    assert reopened[:] == log_before
    assert [e[0] for e in reopened[-3:]] == [_Group.MARK + c for c in commands]
    assert (reopened.getCurrentTerm(), reopened.getVotedForNodeId()) == (term, "n1")
    assert reopened.getRaftCommitIndex() == log_before[-1][1]

    again = _Group(reopened)  # replays the committed entries from the journal
    again.tick_until(lambda: again._isLeader() and again.applied == commands)
    assert again._getTerm() == term + 1
    again.destroy()
