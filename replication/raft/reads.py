"""ReadIndex: linearizable reads without a log entry, for one pysyncobj group.

A read must see every write acknowledged before it began. Committing a
barrier entry gives that, at the price of a journal write (fsync) and a
replication round for a GET. ReadIndex (Raft thesis §6.4, as etcd does it)
needs one heartbeat round and no entry:

1. The leader takes its commit index as the read's *read index*. That is
   valid only once it has committed an entry of its own term: before, its
   commit index may lag what an earlier leader acknowledged (pysyncobj appends
   a no-op on election, so this holds a round trip after winning). Until then
   the request is refused with ``not_ready`` and the caller commits a barrier.
2. It confirms it is still the leader: a heartbeat round whose replies, from a
   majority of the voters (itself included), are of its term and were sent
   after the read arrived. Every AppendEntries the leader sends carries its
   newest round number ``rs``; a follower echoes the ``rs`` of the message it
   answers (``GroupTransport.send``); replies of another term never reach this
   module (``RaftGroup.deliver`` drops them). A voter counts for round ``r``
   once it echoed ``r`` or later. A leader cut off from the majority (a newer
   leader may be taking writes) never confirms, and the read waits, then fails.
3. The read runs on this replica's store once it has applied up to the read
   index (``wait_applied``).

Reads that arrive between two ticks share one round, and while a round is in
flight new reads wait for the next one (started when it is confirmed). A
follower asks the leader for a confirmed read index over the peer RPC and
waits for its own apply (the replicator does that). Round numbers only grow
within a process; after a restart a node must win a new term to lead, and
replies of earlier terms are dropped, so an echo can never speak for a round
it did not answer.

All methods run on the Raft thread.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

LEADER = 2

ReadCallback = Callable[[int | None, str | None], None]
"""``cb(index, None)`` once the read may run, ``cb(None, why)`` when it cannot
(``not_leader``: ask the leader or commit a barrier; ``not_ready``: commit a barrier)."""


@dataclass
class _Round:
    rs: int
    term: int
    index: int
    waiting: list[tuple[ReadCallback, bool]] = field(default_factory=list)


class ReadIndex:
    """The leader's read rounds and every replica's apply waiters, for one group."""

    def __init__(self, group: Any) -> None:
        self.g = group
        self.rs = 0  # the newest round started; every AppendEntries carries it
        self.echo: int | None = None  # the rs of the AppendEntries being answered (a follower)
        self._queued: list[tuple[ReadCallback, bool]] = []
        self._rounds: list[_Round] = []
        self._acked: dict[str, int] = {}  # voter id -> newest rs it echoed in this term
        self._appliers: list[tuple[int, int, ReadCallback]] = []  # heap of (index, n, cb)
        self._n = itertools.count()
        self.rounds_started = 0
        self.reads_confirmed = 0

    # ---- the leader ------------------------------------------------------------

    def request(self, cb: ReadCallback, wait_applied: bool = True) -> None:
        """Queue a read for the next round; ``wait_applied``: answer only once this
        replica applied the read index (a follower asking waits for its own apply)."""
        why = self._refusal()
        if why is not None:
            cb(None, why)
            return
        self._queued.append((cb, wait_applied))

    def _refusal(self) -> str | None:
        g = self.g
        if g.state() != LEADER:
            return "not_leader"
        if g.elections.transfer_pending():
            return "not_leader"  # handing over: the target leads in a moment
        if not self._committed_in_term():
            return "not_ready"
        return None

    def _committed_in_term(self) -> bool:
        g = self.g
        log = g._SyncObj__raftLog
        commit = g.raftCommitIndex
        first = log[0][1]
        if commit < first or commit > log[-1][1]:
            return False
        term: int = log[commit - first][2]
        current: int = g.raftCurrentTerm
        return term == current

    def start_round(self) -> None:
        """Once per tick: the reads queued since the last round get one, unless a
        round is still in flight: they then go together in the next, started as
        soon as that one is confirmed (one round trip at a time, as etcd does;
        under many reads a round carries hundreds of them)."""
        if not self._queued or self._rounds:
            return
        g = self.g
        why = self._refusal()
        if why is not None:
            self._fail_all(why)
            return
        self.rs += 1
        self.rounds_started += 1
        self._rounds.append(_Round(self.rs, g.raftCurrentTerm, g.raftCommitIndex, self._queued))
        self._queued = []
        if not self._confirm():
            g.send_append_entries()  # the heartbeat round, now rather than at the next period

    def on_reply(self, node_id: str, msg: dict[str, Any]) -> None:
        """A ``next_node_idx`` reply of this term (``RaftGroup.deliver`` checked the term)."""
        rs = msg.get("rs")
        if isinstance(rs, int) and rs > self._acked.get(node_id, 0):
            self._acked[node_id] = rs
            if self._rounds and self._confirm() and self._queued:
                self.start_round()  # the reads that waited for the round in flight

    def _confirm(self) -> bool:
        """Answer every round a majority has confirmed; True when none is left."""
        g = self.g
        term = g.raftCurrentTerm
        if g.state() != LEADER:
            self._fail_all("not_leader")
            return True
        voters = [n.id for n in g._SyncObj__otherNodes]
        others_needed = (len(voters) + 1) // 2  # a majority of voters + self, less self
        if others_needed == 0:
            confirmed = self.rs
        else:
            acks = sorted((self._acked.get(v, 0) for v in voters), reverse=True)
            confirmed = acks[others_needed - 1]
        while self._rounds and self._rounds[0].rs <= confirmed:
            rnd = self._rounds.pop(0)
            if rnd.term != term:
                self._answer(rnd.waiting, None, "not_leader")
                continue
            self.reads_confirmed += len(rnd.waiting)
            for cb, wait_applied in rnd.waiting:
                if wait_applied:
                    self.wait_applied(rnd.index, cb)
                else:
                    cb(rnd.index, None)
        return not self._rounds

    def after_tick(self) -> None:
        """Rounds of a lost leadership fail; apply waiters whose index was applied run."""
        if (self._rounds or self._queued) and self.g.state() != LEADER:
            self._fail_all("not_leader")
        self._run_applied()

    def _fail_all(self, why: str) -> None:
        waiting = self._queued + [w for rnd in self._rounds for w in rnd.waiting]
        self._queued, self._rounds = [], []
        self._answer(waiting, None, why)

    @staticmethod
    def _answer(waiting: list[tuple[ReadCallback, bool]], index: int | None, why: str | None) -> None:
        for cb, _ in waiting:
            cb(index, why)

    # ---- every replica ---------------------------------------------------------

    def wait_applied(self, index: int, cb: ReadCallback) -> None:
        """``cb(index, None)`` once this replica has applied ``index``."""
        if self.g.raftLastApplied >= index:
            cb(index, None)
            return
        heapq.heappush(self._appliers, (index, next(self._n), cb))

    def _run_applied(self) -> None:
        applied = self.g.raftLastApplied
        while self._appliers and self._appliers[0][0] <= applied:
            index, _, cb = heapq.heappop(self._appliers)
            cb(index, None)

    def abandon(self, why: str) -> None:
        """The group is closing: nobody waits for it any more."""
        self._fail_all(why)
        appliers, self._appliers = self._appliers, []
        for _, _, cb in appliers:
            cb(None, why)
