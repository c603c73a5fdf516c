"""One Raft group on pysyncobj: a partition (or the meta group) of one node.

pysyncobj gives us elections, log replication, commit and follower-to-leader
forwarding of proposals. We replace the three parts of it that the project's
rules forbid or that are not durable:

- the transport: ``GroupTransport`` hands messages to the node's single peer
  port (``PeerMux``), msgpack-encoded, after making the journal durable;
- the journal: ours fsyncs (``DurableJournal``) instead of pysyncobj's mmap file;
- the apply path: ``_SyncObj__doApplyCommand`` is overridden so a command is
  msgpack bytes handed to ``StateMachine.apply`` with its log index; pysyncobj
  never unpickles a command;
- snapshots: ``LmdbSnapshotter`` replaces pysyncobj's Serializer (LMDB images,
  acknowledged and checksummed installs), and ``_SyncObj__loadDumpFile`` keeps
  the log after an image by Raft's rule instead of clearing it.

And we close three gaps in pysyncobj's Raft (see ``deliver``): a follower's
commit index moves only on a log-checked AppendEntries, never on a snapshot
chunk; AppendEntries batches stay inside one peer frame; a failed image load
is an error, never a silent success.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

import lmdb
import msgpack
import pysyncobj.syncobj as _syncobj
from hanzo_tasks.replication.raft import codec
from hanzo_tasks.replication.raft.elections import Elections
from hanzo_tasks.replication.raft.reads import ReadIndex
from hanzo_tasks.replication.raft.snapshots import INSTALLED, LmdbSnapshotter
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.journal import Journal
from pysyncobj.node import Node
from pysyncobj.transport import Transport

log = logging.getLogger("tasks.raft")

REGULAR = b"\x00"  # pysyncobj's _COMMAND_TYPE.REGULAR
MEMBERSHIP = b"\x02"  # pysyncobj's _COMMAND_TYPE.MEMBERSHIP, with a msgpack body (never pickle)
_REGULAR_BYTE = 0
_MEMBERSHIP_BYTE = 2
#: What one entry adds to an AppendEntries message besides its command bytes
#: (msgpack array header, index, term): counted so a batch fits in one frame.
ENTRY_OVERHEAD = 32


class SnapshotMismatch(RuntimeError):
    """The log and the snapshot image cannot both be right (the log starts after
    the image): refusing to start beats guessing which entries are missing."""


STALL_RETRY_S = 1.0  # how often a stalled replica tries the entry that did not fit again

#: Committed entries are applied in batches, each in one LMDB write transaction
#: (one commit, with its fsync where the store syncs, and one applied-index
#: write for the whole batch). A batch is cut at this many entries or command
#: bytes (at least one entry), so that one transaction stays small next to the
#: map and a map growth retries a bounded amount of work.
APPLY_BATCH_ENTRIES = 256
APPLY_BATCH_BYTES = 4 << 20


def membership_command(op: str, node_id: str) -> bytes:
    """A Raft membership change ("add" / "rem") in our encoding."""
    body: bytes = msgpack.packb([op, node_id], use_bin_type=True)
    return MEMBERSHIP + body


def _install_journal_factory() -> None:
    """Let ``conf.journalFile`` carry a ready journal instance.

    pysyncobj builds its journal with ``createJournal(conf.journalFile)`` inside
    ``SyncObj.__init__``; this wrapper returns the instance when it is one and
    defers to the original for paths and None. Installed once, idempotent.
    """
    original = _syncobj.createJournal
    if getattr(original, "_tasks_wrapper", False):
        return

    def create_journal(journal_file: Any) -> Journal:
        if isinstance(journal_file, Journal):
            return journal_file
        return original(journal_file)

    create_journal._tasks_wrapper = True  # type: ignore[attr-defined]
    _syncobj.createJournal = create_journal


_install_journal_factory()


class GroupTransport(Transport):  # type: ignore[misc]  # pysyncobj has no type information
    """pysyncobj's view of the peer port, for one group.

    With ``learners`` (the meta group), a connected peer that is not a voter is
    a pysyncobj read-only node: the leader sends it every entry (and the
    snapshot), it neither votes nor counts towards a commit. A voter removed
    while connected becomes one; a learner added as a voter stops being one.
    """

    def __init__(self, syncObj: Any, selfNode: Any, otherNodes: Any, *, send: Callable[[str, bytes], bool],
                 flush: Callable[[], None], connected: Callable[[str], bool] | None = None,
                 learners: bool = False) -> None:
        super().__init__(syncObj, selfNode, otherNodes)
        self._group = syncObj
        self._send = send
        self._flush = flush
        self._connected = connected
        self._learners = learners
        self._group = syncObj
        self.sent = 0

    def _voter(self, node: Node) -> bool:
        return node in self._group._SyncObj__otherNodes

    def _readonly(self) -> set[Node]:
        nodes: set[Node] = self._group._SyncObj__readonlyNodes
        return nodes

    @property
    def ready(self) -> bool:
        return True

    def tryGetReady(self) -> None:
        return None

    def waitReady(self) -> None:
        return None

    def addNode(self, node: Node) -> None:
        # A voter added while its link is already up gets no "up" event: say so
        # now, or the leader would never send it anything.
        if self._learners:
            self._readonly().discard(node)  # its indexes are the voter's now (pysyncobj just set them)
        if self._connected is not None and self._connected(node.id):
            self._onNodeConnected(node)

    def dropNode(self, node: Node) -> None:
        if self._learners and self._connected is not None and self._connected(node.id):
            self._onReadonlyNodeConnected(node)

    def send(self, node: Node, message: dict[str, Any]) -> bool:
        # Durable before anything leaves: a vote, an acknowledgement or an
        # entry sent to followers is never ahead of this node's disk.
        self._flush()
        self.sent += 1
        kind = message.get("type")
        if kind == "append_entries":
            rs = self._group.reads.rs
            if rs:  # the newest read round (ReadIndex): the reply echoes it
                message = {**message, "rs": rs}
            idle = self._group.idle_heartbeat
            if idle:  # slow heartbeats from now on: followers hold their elections longer
                message = {**message, "idle": int(idle * 1000)}
        elif kind == "next_node_idx":
            # pysyncobj's replies carry no term: a late one from an earlier term
            # could move a re-elected leader's matchIndex. RaftGroup.deliver drops those.
            message = {**message, "term": self._group.raftCurrentTerm}
            echo = self._group.reads.echo
            if echo is not None:
                message["rs"] = echo
        elif kind == "request_vote" and getattr(self._group, "campaign_transfer", False):
            message = {**message, "transfer": True}  # a hand-over: voters' leader stickiness gives way
        return self._send(node.id, codec.encode(message))

    def destroy(self) -> None:
        return None

    # called from the Raft thread by the replicator
    def deliver(self, node: Node, message: dict[str, Any]) -> None:
        self._onMessageReceived(node, message)

    def node_up(self, node: Node) -> None:
        if self._learners and not self._voter(node):
            self._onReadonlyNodeConnected(node)
        else:
            self._onNodeConnected(node)

    def node_down(self, node: Node) -> None:
        if self._learners and node in self._readonly():
            self._onReadonlyNodeDisconnected(node)
        else:
            self._onNodeDisconnected(node)


class StorageStalled(Exception):
    """A committed entry cannot be applied here (the partition's map is at its
    maximum or the disk is full). Raised by the apply of one entry and caught by
    the apply loop (``RaftGroup._SyncObj__applyLogEntries``), so that the applied
    index does not move past the entry: the replica stops applying instead of
    skipping (SPEC §10.1), and applies it once there is room again. Only the
    applying stops: the group keeps voting, appending and heartbeating."""


class ApplyDeferred(Exception):
    """The entry needs a larger map while a snapshot image is being copied:
    nothing was written; the apply loop stops for this tick and retries."""


class ApplyFailed(Exception):
    """Applying a committed entry raised something other than a stall (an LMDB
    or I/O error: handler bugs are contained by the state machine itself). The
    replica cannot make progress past that entry in-process, so the replicator
    treats it as fatal (fail-stop; a restart replays the journal)."""

    def __init__(self, group_id: int, index: int) -> None:
        super().__init__(f"group {group_id}: applying entry {index} failed")
        self.group_id = group_id
        self.index = index


_LEADER = 2  # pysyncobj's _RAFT_STATE.LEADER
IDLE_ELECTION_FACTOR = 3
LOST_LEADER_JITTER = 0.1
"""Seconds over which followers that lost the link to their leader spread their pre-votes."""
"""A follower of a group its leader declared idle waits this many idle heartbeats before an election."""


class RaftGroup(SyncObj):  # type: ignore[misc]  # pysyncobj has no type information
    """A pysyncobj group whose state machine is a partition's LMDB."""

    # pysyncobj's private state that this class writes as well as reads.
    _SyncObj__raftCommitIndex: int
    _SyncObj__raftElectionDeadline: float

    def __init__(
        self,
        group_id: int,
        self_id: str,
        peer_ids: list[str],
        conf: SyncObjConf,
        machine: Any,
        transport_factory: Callable[..., GroupTransport],
        on_applied: Callable[[int, int, dict[str, Any] | None], None],
        snapshotter: LmdbSnapshotter,
        learner: bool = False,
    ) -> None:
        self.group_id = group_id
        self.machine = machine
        # A learner is a pysyncobj read-only node (no self node: it never stands
        # for election nor votes); the leader streams the log to it. Its node
        # set is the voters', and includes itself once it is added as one.
        self.learner = learner
        # Log index of the membership change this node appended as leader and
        # has not applied yet (see _SyncObj__changeCluster).
        self.pending_change: int | None = None
        self._on_applied = on_applied
        self.snapshotter = snapshotter
        self.nodes = {pid: Node(pid) for pid in peer_ids}
        self.self_node = Node(self_id)
        # Why this replica stopped applying (None while it applies); the replicator reads it every tick.
        self.stall: StorageStalled | None = None
        self._stall_retry_at = 0.0
        # The bounds of one apply batch (1 entry: one transaction per entry, as before batching).
        self.apply_batch_entries = APPLY_BATCH_ENTRIES
        self.apply_batch_bytes = APPLY_BATCH_BYTES
        super().__init__(
            None if learner else self.self_node,
            list(self.nodes.values()),
            conf=conf,
            transport=None,
            transportClass=transport_factory,
        )
        self._SyncObj__serializer = snapshotter
        self.elections = Elections(self)
        self.reads = ReadIndex(self)
        # Quiet groups (raft.idle_after): a leader with nothing to replicate for a
        # while heartbeats every ``idle_heartbeat`` s and says so in each
        # AppendEntries; its followers (``quiet``) hold elections for
        # IDLE_ELECTION_FACTOR times that. The first write or read ends it.
        self.idle_heartbeat = 0.0
        self.quiet = 0.0  # a follower: how long its idle leader may stay silent (s), 0 while busy
        self._busy_timing = (conf.appendEntriesPeriod, conf.leaderFallbackTimeout)
        self.campaign_transfer = False
        # Load the image now, not at the first tick: a journal that does not
        # fit its image must stop the node before it serves or votes.
        self._SyncObj__needLoadDumpFile = False
        if snapshotter.has_image():
            self._SyncObj__loadDumpFile(False)

    # ---- elections and hand-overs -----------------------------------------------

    def _onTick(self, timeToWait: float = 0.0) -> None:  # noqa: N802, N803 - pysyncobj's name
        """One tick of pysyncobj, with a pre-vote round in front of every
        election that is not a hand-over (see ``Elections``)."""
        self.campaign_transfer = self.elections.before_tick()
        try:
            super()._onTick(timeToWait)
        finally:
            self.campaign_transfer = False
            self.elections.after_tick()
        self.reads.start_round()
        self.reads.after_tick()

    def _checkCommandsToApply(self) -> None:  # noqa: N802 - pysyncobj's name
        """New commands wait while leadership is being handed over: a log that
        keeps growing would never let the target catch up (Raft §3.10)."""
        if self.elections.transfer_pending():
            return
        super()._checkCommandsToApply()

    def leader_lost(self) -> None:
        """The peer link to this group's leader closed (its process died, most
        often): start a pre-vote round after a short random delay instead of
        waiting out the election timeout. It wins only if a majority lost the
        leader too; a voter whose link is up still hears it and says no, so a
        flapping link deposes nobody."""
        if self.learner or self.state() == _LEADER:
            return
        from pysyncobj.monotonic import monotonic

        self.elections.leader_lost()
        self.quiet = 0.0
        # Not at once: the other voters are told of the closed link a moment later
        # (their own read of it); a pre-vote that reached them first would be refused.
        self._SyncObj__raftElectionDeadline = monotonic() + random.uniform(LOST_LEADER_JITTER / 4, LOST_LEADER_JITTER)

    def go_idle(self, heartbeat: float) -> None:
        """Leader: nothing to replicate for ``raft.idle_after``: heartbeat every
        ``heartbeat`` s. The leader keeps its majority check in step (a follower
        answers once a heartbeat, so it steps down only after several missed)."""
        if self.idle_heartbeat:
            return
        conf = self._SyncObj__conf
        self.idle_heartbeat = heartbeat
        conf.appendEntriesPeriod = heartbeat
        conf.leaderFallbackTimeout = max(self._busy_timing[1], IDLE_ELECTION_FACTOR * heartbeat)
        self.send_append_entries()  # the followers learn it now

    def wake(self) -> None:
        """A write or read arrived (or leadership changed): usual heartbeats again,
        announced at once when leading, so followers return to usual timeouts."""
        if not self.idle_heartbeat:
            return
        conf = self._SyncObj__conf
        conf.appendEntriesPeriod, conf.leaderFallbackTimeout = self._busy_timing
        self.idle_heartbeat = 0.0
        if self.state() == _LEADER:
            self.send_append_entries()

    def begin_transfer(self, target: str | None) -> bool:
        """Hand leadership to ``target`` (a current voter; None: the most
        caught-up connected one) once it holds the whole log. False when this
        node does not lead or the target is no voter."""
        return self.elections.begin_transfer(target)

    def voter_nodes(self) -> dict[str, Node]:
        """The group's other voters now (joined ones included), by id."""
        return {n.id: n for n in self._SyncObj__otherNodes}

    def match_index(self, node: Node) -> int:
        index: int = self._SyncObj__raftMatchIndex.get(node, 0)
        return index

    def connected_nodes(self) -> set[Node]:
        return set(self._SyncObj__connectedNodes)

    # ---- snapshots ----------------------------------------------------------

    def _SyncObj__loadDumpFile(self, clearJournal: bool) -> None:  # noqa: N802
        """Load the snapshot image and fit the log to it, by Raft's rule.

        pysyncobj clears the whole log whenever its first two entries are not
        the image's, which erases acknowledged entries after a crash between
        an image going into place and the log prefix being dropped. Raft says:
        when the log holds the image's last entry (same index and term), keep
        what follows it and drop only the prefix; otherwise the image replaces
        the log. A log that starts after the image cannot be fitted at all.
        Errors propagate (pysyncobj swallowed them and answered success).

        That rule is for a restart. An *install* (``clearJournal``) always
        replaces the log, as pysyncobj does: pysyncobj's reply to it claims
        the follower's last index + 1, and a kept suffix (entries of a dead
        term past the image) would be counted as matching the leader's log,
        so the leader would commit entries a majority does not hold. Found by
        the long chaos run; ``test_an_install_replaces_the_log_and_claims_only_the_image``.
        """
        _, e_last, e_prev, cluster = self.snapshotter.deserialize()
        journal = self._SyncObj__raftLog
        first, last = journal[0][1], journal[-1][1]
        idx_last, term_last = e_last[1], e_last[2]
        if clearJournal:
            journal.clear()
            journal.add(*e_prev)
            journal.add(*e_last)
        elif first <= idx_last <= last and journal[idx_last - first][2] == term_last:
            keep_from = max(idx_last - 1, first)  # pysyncobj keeps the image's two entries at the head
            if keep_from > first:
                journal.deleteEntriesTo(keep_from - first)
        elif first > idx_last + 1:
            raise SnapshotMismatch(
                f"group {self.group_id}: the log starts at {first}, after the image's last entry {idx_last}")
        else:
            journal.clear()
            journal.add(*e_prev)
            journal.add(*e_last)
        self._SyncObj__raftLastApplied = idx_last
        commit = self._SyncObj__raftCommitIndex
        # An image holds committed entries only: its index is committed.
        commit = min(max(commit, idx_last), self.last_log_index())
        if commit != self._SyncObj__raftCommitIndex:
            self._SyncObj__raftCommitIndex = commit
            journal.setRaftCommitIndex(commit)
        me = self._SyncObj__selfNode  # None on a learner, as in pysyncobj
        self._SyncObj__updateClusterConfiguration([n for n in cluster if n != me])
        self._SyncObj__onSetCodeVersion(0)

    def _SyncObj__getEntries(self, fromIDx: int, count: int | None = None,  # noqa: N802, N803
                             maxSizeBytes: int | None = None) -> list[Any]:  # noqa: N803
        """pysyncobj's batch may overshoot its byte budget by a whole entry, and the
        peer port drops a frame over ``max_frame``, so the same batch was dropped
        at every heartbeat: a follower far enough behind never caught up. Here a
        batch stays within the budget (entry overhead counted) and holds at
        least one entry; proposals larger than one batch are refused upstream."""
        entries: list[Any] = SyncObj._SyncObj__getEntries(self, fromIDx, count)
        if maxSizeBytes is None:
            return entries
        total = 0
        for i, entry in enumerate(entries):
            total += len(entry[0]) + ENTRY_OVERHEAD
            if total > maxSizeBytes and i > 0:
                return entries[:i]
        return entries

    # pysyncobj parses membership entries with pickle; ours are msgpack [op, id].
    def _SyncObj__parseChangeClusterRequest(self, command: bytes) -> list[Any] | None:  # noqa: N802
        if not command or command[0] != _MEMBERSHIP_BYTE:
            return None
        try:
            req = msgpack.unpackb(command[1:], raw=False)
        except Exception:
            return None
        if not (isinstance(req, list) and len(req) == 2 and req[0] in ("add", "rem") and isinstance(req[1], str)):
            return None
        return [req[0], req[1], Node(req[1])]

    # pysyncobj's one-change-at-a-time guard reads ``__changeClusterIDx``, which
    # nothing ever sets: a leader would append a second change while the first
    # is uncommitted, and two configurations in flight can have majorities that
    # do not overlap (two leaders in one term). This is the guard it meant to
    # be: the change's index is remembered when it is appended, and the next
    # one is refused until this node applied (so the group committed) it. A
    # leader's changes of earlier terms are covered by the no-op check: once
    # its term's no-op is applied, every entry before it is committed.
    def _SyncObj__changeCluster(self, request: list[Any]) -> bool:  # noqa: N802
        noop = self._SyncObj__noopIDx
        if noop is None or self.raftLastApplied < noop:
            return False
        if self.pending_change is not None and self.raftLastApplied < self.pending_change:
            return False
        index = self.last_log_index() + 1  # where pysyncobj appends it once this returns True
        if not self._SyncObj__doChangeCluster(request):
            return False
        self.pending_change = index
        return True

    def membership(self) -> tuple[set[str], bool]:
        """The voters (this node included) as of the applied index, and whether a
        membership change beyond it is in the log (not yet known committed).

        pysyncobj switches to a configuration when its entry is appended (the
        Raft rule), so its node set runs ahead of the commit; undoing the
        changes logged after the applied index gives the committed one. Undoing
        is by set, so a change pysyncobj did not apply (an uncommitted tail
        read back from the journal at start) is undone harmlessly.
        """
        me = self.self_node.id
        voters = self.member_ids() | (set() if self.learner else {me})
        applied, last = self.raftLastApplied, self.last_log_index()
        pending = False
        if last > applied:
            entries = self._SyncObj__getEntries(applied + 1, last - applied)
            for entry in reversed(entries):
                req = self._SyncObj__parseChangeClusterRequest(entry[0])
                if req is None:
                    continue
                pending = True
                op, node = req[0], req[1]
                if op == "add" and (self.learner or node != me):
                    voters.discard(node)
                elif op == "rem":
                    voters.add(node)
        return voters, pending

    def answering(self, window: float) -> set[str]:
        """On a leader: the voters (and learners) that answered an AppendEntries
        within the last ``window`` seconds, itself included (empty on a
        follower). A voter that is down, or up but not running this group,
        does not answer."""
        if not self._isLeader():
            return set()
        from pysyncobj.monotonic import monotonic

        now = monotonic()
        last = self._SyncObj__lastResponseTime
        others = self._SyncObj__otherNodes | self._SyncObj__readonlyNodes
        return {self.self_node.id} | {n.id for n in others if now - last.get(n, 0.0) <= window}

    def readonly_ids(self) -> set[str]:
        """Connected peers the leader streams the log to without their vote (learners)."""
        return {n.id for n in self._SyncObj__readonlyNodes}

    def promoted(self) -> bool:
        """A learner whose addition as a voter committed (it must now run as one)."""
        if not self.learner:
            return False
        voters, pending = self.membership()
        return self.self_node.id in voters and not pending

    def settled(self) -> bool:
        """A leader that applied its term's no-op: it knows every committed entry."""
        noop = self._SyncObj__noopIDx
        return self._isLeader() and noop is not None and self.raftLastApplied >= noop

    # pysyncobj calls this (name-mangled) for every committed entry, in order.
    def _SyncObj__doApplyCommand(self, command: bytes) -> dict[str, Any] | None:  # noqa: N802
        index = self.raftLastApplied + 1
        if command and command[0] == _MEMBERSHIP_BYTE:
            # Already applied when appended; this matters when a journal is replayed.
            req = self._SyncObj__parseChangeClusterRequest(command)
            if req is not None:
                self._SyncObj__doChangeCluster(req)
                record = getattr(self.machine, "apply_membership", None)
                if record is not None:  # the meta group keeps its voter set in its state
                    record(index, req[0], req[1])
            return None
        if not command or command[0] != _REGULAR_BYTE:
            return None  # no-op and version entries carry no state
        try:
            result: dict[str, Any] | None = self.machine.apply(index, command[1:])
        except (lmdb.MapFullError, lmdb.DiskError) as e:  # a store that does not grow (meta), a full disk
            raise StorageStalled(f"group {self.group_id}: entry {index} does not fit ({e})") from e
        if result is not None and result.get("code") == "storage_full":
            raise StorageStalled(f"group {self.group_id}: entry {index} does not fit")
        if result is not None and result.get("code") == "resize_deferred":
            raise ApplyDeferred(index)
        self._applied(index, result)
        return result

    # pysyncobj's apply loop, called from ``_onTick`` before heartbeats, the
    # commands queue and compaction. Ours applies the committed entries in
    # batches, each in one LMDB write transaction (see ``_apply_batch``); it
    # stops at an entry that does not fit (StorageStalled) and returns, so the
    # rest of the tick still runs: a stalled replica keeps voting, appending,
    # acknowledging and heartbeating (pysyncobj's own loop would let the
    # exception abort the tick). Callers waiting for an entry are answered only
    # once it applied, so a stall loses no callback; any other error of the
    # apply is ApplyFailed (fatal).
    def _SyncObj__applyLogEntries(self) -> bool:  # noqa: N802
        commit = self._SyncObj__raftCommitIndex
        applied = self._SyncObj__raftLastApplied
        if commit <= applied or (self.stall is not None and time.monotonic() < self._stall_retry_at):
            return False
        entries = self._SyncObj__getEntries(applied + 1, commit - applied)
        start = 0
        while start < len(entries):
            command = entries[start][0]
            if command and command[0] == _MEMBERSHIP_BYTE:
                # pysyncobj's configuration change (and the meta group's record
                # of it, in a transaction of its own): applied alone, as before.
                if not self._apply_one(entries[start]):
                    return False
                start += 1
                continue
            end = self._batch_end(entries, start)
            if not self._apply_batch(entries[start:end]):
                return False
            start = end
        return not self._SyncObj__conf.appendEntriesUseBatch

    def _batch_end(self, entries: list[Any], start: int) -> int:
        """Where the batch starting at ``start`` ends: before a membership entry,
        or at the entry or byte bound (a batch holds at least one entry)."""
        end, size = start, 0
        while end < len(entries) and end - start < self.apply_batch_entries:
            command = entries[end][0]
            if command and command[0] == _MEMBERSHIP_BYTE:
                break
            size += len(command)
            if size > self.apply_batch_bytes and end > start:
                break
            end += 1
        return end

    def _apply_one(self, entry: list[Any]) -> bool:
        """One entry through ``_SyncObj__doApplyCommand`` (its own transaction);
        False when the loop must stop here (deferred or stalled)."""
        command, idx, term = entry
        try:
            result = self._SyncObj__doApplyCommand(command)
        except ApplyDeferred:
            return False  # the map grows once the snapshot copy is done: the next tick retries
        except StorageStalled as e:
            return self._stalled(e)
        except Exception as e:
            raise ApplyFailed(self.group_id, idx) from e
        self._answer(idx, term, result)
        return True

    def _apply_batch(self, batch: list[Any]) -> bool:
        """Apply a run of entries without membership changes, the regular ones in
        one ``apply_batch`` of the machine (one LMDB write transaction, which
        records the applied index too); False when the loop must stop.

        Nothing is answered before the machine returned, i.e. before the
        transaction committed. Every outcome is the one entry-by-entry apply
        would have had: the entries before a stalled or deferred one are
        applied and answered, that one and those after it are not. The
        machine says so per entry at the map's limit (STORAGE_FULL or
        RESIZE_DEFERRED from the first entry that did not fit on). An
        exception means that nothing of the transaction committed; a batch
        of several regular entries is then applied again entry by entry, so
        a stall or an ApplyFailed names the entry it belongs to.
        """
        regular = [(idx, command[1:]) for command, idx, _ in batch if command and command[0] == _REGULAR_BYTE]
        results: list[dict[str, Any] | None] = []
        failure: Exception | None = None
        if regular:
            try:
                results = self.machine.apply_batch(regular)
            except Exception as e:
                if len(regular) > 1:
                    return all(self._apply_one(entry) for entry in batch)  # stops at the first False
                failure = e
        outcomes = iter(results)
        for command, idx, term in batch:
            if not command or command[0] != _REGULAR_BYTE:
                self._answer(idx, term, None)  # no-op and version entries carry no state
                continue
            if failure is not None:
                if isinstance(failure, (lmdb.MapFullError, lmdb.DiskError)):  # a store that does not grow, a full disk
                    stall = StorageStalled(f"group {self.group_id}: entry {idx} does not fit ({failure})")
                    stall.__cause__ = failure
                    return self._stalled(stall)
                raise ApplyFailed(self.group_id, idx) from failure
            result = next(outcomes)
            code = None if result is None else result.get("code")
            if code == "storage_full":
                return self._stalled(StorageStalled(f"group {self.group_id}: entry {idx} does not fit"))
            if code == "resize_deferred":
                return False  # the map grows once the snapshot copy is done: the next tick retries
            try:
                self._applied(idx, result)
            except Exception as e:
                raise ApplyFailed(self.group_id, idx) from e
            self._answer(idx, term, result)
        return True

    def _applied(self, idx: int, result: dict[str, Any] | None) -> None:
        """Tell the listeners of every command applied at ``idx`` (each of a batch)."""
        batch = None if result is None else result.get("_batch")
        if batch is None:
            self._on_applied(self.group_id, idx, result)
            return
        for each in batch:
            self._on_applied(self.group_id, idx, each)

    def _stalled(self, e: StorageStalled) -> bool:
        # Retried once a second, not every tick: each attempt redoes the whole entry.
        self.stall = e
        self._stall_retry_at = time.monotonic() + STALL_RETRY_S
        return False

    def _answer(self, idx: int, term: int, result: dict[str, Any] | None) -> None:
        """Entry ``idx`` applied: count it and answer who waits for it (the
        entry's term is the one they proposed in, or it was replaced)."""
        self.stall = None
        self._SyncObj__raftLastApplied += 1
        for subscribed_term, callback in self._SyncObj__commandsWaitingCommit.pop(idx, ()):
            ok = subscribed_term == term
            try:
                callback(result if ok else None, FAIL_REASON.SUCCESS if ok else FAIL_REASON.DISCARDED)
            except Exception:
                log.exception("group %d: a commit callback failed", self.group_id)

    def abandon_waiting(self) -> None:
        """Answer every caller still waiting for a commit with UNKNOWN_OUTCOME
        (the replicator stopped for good; the process is about to exit)."""
        self.reads.abandon("stopped")
        waiting = [cb for subs in self._SyncObj__commandsWaitingCommit.values() for _, cb in subs]
        waiting += list(self._SyncObj__commandsWaitingReply.values())
        self._SyncObj__commandsWaitingCommit.clear()
        self._SyncObj__commandsWaitingReply.clear()
        for callback in waiting:
            try:
                callback(None, FAIL_REASON.UNKNOWN_OUTCOME)
            except Exception:
                log.debug("group %d: answering a waiting caller failed", self.group_id, exc_info=True)

    def hold_elections_until(self, deadline: float) -> None:
        """Do not stand for election before ``deadline`` (pysyncobj's monotonic clock);
        a later election deadline of pysyncobj's own is kept."""
        current = self._SyncObj__raftElectionDeadline
        self._SyncObj__raftElectionDeadline = max(current, deadline)

    def hold_elections(self, seconds: float) -> None:
        """Do not stand for election for a while (a replica just added waits for the leader's first append)."""
        from pysyncobj.monotonic import monotonic

        self._SyncObj__raftElectionDeadline = monotonic() + seconds

    @property
    def transport(self) -> GroupTransport:
        transport: GroupTransport = self._SyncObj__transport
        return transport

    def state(self) -> int:
        state: int = self._SyncObj__raftState
        return state

    def leader_id(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else leader.id

    def send_append_entries(self) -> None:
        """Replicate new entries (or a new commit index) now, not at the next heartbeat."""
        self._SyncObj__sendAppendEntries()

    def normalize_append(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Drop the leading entries of an AppendEntries that this log already holds.

        pysyncobj deletes everything after ``prevLogIdx`` whenever the log is
        longer, then re-adds the message's entries, even when they are the same
        (Raft truncates only on a conflict). A resent batch would thus rewrite
        applied entries. Trimming the identical prefix keeps the Raft rule: what
        remains starts at our end or at a real conflict (different term), where
        truncating is right. A message whose entries are all present but that
        ends before our last entry is left as it is (the leader's log ends there).
        """
        entries = msg.get("entries")
        if not entries or "prevLogIdx" not in msg:
            return msg
        log = self._SyncObj__raftLog
        first, last = log[0][1], log[-1][1]
        k = 0
        while k < len(entries):
            idx, term = entries[k][1], entries[k][2]
            if idx < first or idx > last or log[idx - first][2] != term:
                break
            k += 1
        if k == 0:
            return msg
        if k == len(entries) and entries[-1][1] < last:
            return msg
        out = dict(msg)
        out["entries"] = entries[k:]
        out["prevLogIdx"] = entries[k - 1][1]
        out["prevLogTerm"] = entries[k - 1][2]
        return out

    def deliver(self, node: Node, msg: dict[str, Any]) -> None:
        """Hand one received message to pysyncobj, after the checks it lacks.

        - AppendEntries is trimmed of entries this log already holds (see
          ``normalize_append``).
        - A snapshot chunk (``serialized``) is taken by the snapshotter, which
          checks its offset and CRC and acknowledges it (``snapshot_ack``);
          pysyncobj sees the chunk only once the whole image is verified.
        - A message without a log check (a snapshot chunk, or the heartbeat a
          leader sends while it cannot send a chunk) never advances the commit
          index: pysyncobj set ``commit = min(leaderCommit, own last index)``
          there, so a follower holding a dead term's suffix applied entries
          that never committed.
        - ``snapshot_ack`` goes to the leader's snapshotter, and the next
          chunks leave at once.
        - PreVote and leader stickiness (``Elections``): pre-vote messages are
          ours; a RequestVote reaches pysyncobj only when no live leader is
          heard (or it is a hand-over); a reply from another term is dropped;
          a leader of an older term is told the newer one.
        """
        kind = msg["type"]
        if kind in ("pre_vote", "pre_vote_response", "term_notice"):
            self.elections.on_message(node, msg)
            return
        if kind == "request_vote" and not self.elections.may_vote(msg):
            return  # a live leader is not deposed by a node that lost touch (CheckQuorum)
        if kind == "next_node_idx" and msg.get("term", self.raftCurrentTerm) != self.raftCurrentTerm:
            return  # a reply to another term's AppendEntries
        if kind == "next_node_idx" and msg.get("success") and msg["next_node_idx"] > self.last_log_index() + 1:
            # A follower cannot match entries this leader does not have: counting
            # such a reply would commit what a majority does not hold.
            log.warning("group %s: %s claims to match up to %d, past this leader's log (%d); ignored",
                        self.group_id, node.id, msg["next_node_idx"] - 1, self.last_log_index())
            return
        quiet_for = 0.0
        if kind == "append_entries":
            if msg["term"] < self.raftCurrentTerm:
                self.elections.notify_stale_leader(node)
            else:
                idle_ms = msg.get("idle")
                if isinstance(idle_ms, int) and idle_ms > 0:
                    quiet_for = IDLE_ELECTION_FACTOR * idle_ms / 1000.0
                self.elections.heard_leader(quiet_for)
                self.quiet = quiet_for
        if kind == "snapshot_ack":
            if self.state() == _LEADER and msg["term"] == self.raftCurrentTerm:
                self.snapshotter.on_ack(node.id, msg["id"], msg["offset"], msg["gap"])
                self.send_append_entries()
            return
        if kind == "append_entries":
            if "prevLogIdx" in msg:
                msg = self.normalize_append(msg)
            else:
                msg = dict(msg)
                msg["commit_index"] = min(msg["commit_index"], self.raftCommitIndex)
                chunk = msg.get("serialized")
                if chunk is not None:
                    msg["serialized"] = self._take_chunk(node, msg["term"], chunk)
            rs = msg.get("rs")
            self.reads.echo = rs if isinstance(rs, int) else None  # echoed by the reply pysyncobj sends
            try:
                self.transport.deliver(node, msg)
            finally:
                self.reads.echo = None
            if quiet_for:  # after pysyncobj set its usual election deadline
                self.hold_elections(quiet_for)
            return
        self.transport.deliver(node, msg)
        if kind == "next_node_idx" and self.state() == _LEADER:
            self.reads.on_reply(node.id, msg)

    def _take_chunk(self, node: Node, term: int, chunk: list[Any]) -> Any:
        if term < self.raftCurrentTerm:
            return None  # a deposed leader's stream: pysyncobj ignores the message too
        got = self.snapshotter.receive(chunk)
        self.transport.send(node, {"type": "snapshot_ack", "term": term, "id": got.index,
                                   "offset": got.offset, "gap": got.gap})
        return INSTALLED if got.complete else None

    def member_ids(self) -> set[str]:
        """The other voters of this group as pysyncobj knows them now."""
        return {n.id for n in self._SyncObj__otherNodes}

    def last_log_index(self) -> int:
        index: int = self._SyncObj__raftLog[-1][1]
        return index
