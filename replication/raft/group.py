"""One Raft group on pysyncobj: a partition (or the meta group) of one node.

pysyncobj gives us elections, log replication, commit and follower-to-leader
forwarding of proposals. We replace the three parts of it that the project's
rules forbid or that are not durable:

- the transport: ``GroupTransport`` hands messages to the node's single peer
  port (``PeerMux``), msgpack-encoded, after making the journal durable;
- the journal: ours fsyncs (``DurableJournal``) instead of pysyncobj's mmap file;
- the apply path: ``_SyncObj__doApplyCommand`` is overridden so a command is
  msgpack bytes handed to ``StateMachine.apply`` with its log index; pysyncobj
  never unpickles a command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import msgpack
import pysyncobj.syncobj as _syncobj
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.journal import Journal
from pysyncobj.node import Node
from pysyncobj.transport import Transport

from replication.raft import codec

log = logging.getLogger("tasks.raft")

REGULAR = b"\x00"  # pysyncobj's _COMMAND_TYPE.REGULAR
MEMBERSHIP = b"\x02"  # pysyncobj's _COMMAND_TYPE.MEMBERSHIP, with a msgpack body (never pickle)
_REGULAR_BYTE = 0
_MEMBERSHIP_BYTE = 2


def membership_command(op: str, node_id: str) -> bytes:
    """A Raft membership change ("add" / "rem") in our encoding."""
    return MEMBERSHIP + msgpack.packb([op, node_id], use_bin_type=True)


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


class GroupTransport(Transport):
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
        self._send = send
        self._flush = flush
        self._connected = connected
        self._learners = learners
        self._group = syncObj
        self.sent = 0

    def _voter(self, node: Node) -> bool:
        return node in self._group._SyncObj__otherNodes

    def _readonly(self) -> set[Node]:
        return self._group._SyncObj__readonlyNodes

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
    maximum or the disk is full). Raised out of pysyncobj's apply loop so that
    its applied index does not move past the entry: the replica stops applying
    instead of skipping (SPEC §10.1), and applies it once there is room again."""


class RaftGroup(SyncObj):
    """A pysyncobj group whose state machine is a partition's LMDB."""

    def __init__(
        self,
        group_id: int,
        self_id: str,
        peer_ids: list[str],
        conf: SyncObjConf,
        machine: Any,
        transport_factory: Callable[..., GroupTransport],
        on_applied: Callable[[int, int, dict[str, Any] | None], None],
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
        self.nodes = {pid: Node(pid) for pid in peer_ids}
        self.self_node = Node(self_id)
        super().__init__(
            None if learner else self.self_node,
            list(self.nodes.values()),
            conf=conf,
            transport=None,
            transportClass=transport_factory,
        )

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
        noop = self._SyncObj__noopIDx  # type: ignore[attr-defined]
        if noop is None or self.raftLastApplied < noop:
            return False
        if self.pending_change is not None and self.raftLastApplied < self.pending_change:
            return False
        index = self.last_log_index() + 1  # where pysyncobj appends it once this returns True
        if not self._SyncObj__doChangeCluster(request):  # type: ignore[attr-defined]
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
            entries = self._SyncObj__getEntries(applied + 1, last - applied)  # type: ignore[attr-defined]
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
        last = self._SyncObj__lastResponseTime  # type: ignore[attr-defined]
        others = self._SyncObj__otherNodes | self._SyncObj__readonlyNodes  # type: ignore[attr-defined]
        return {self.self_node.id} | {n.id for n in others if now - last.get(n, 0.0) <= window}

    def readonly_ids(self) -> set[str]:
        """Connected peers the leader streams the log to without their vote (learners)."""
        return {n.id for n in self._SyncObj__readonlyNodes}  # type: ignore[attr-defined]

    def promoted(self) -> bool:
        """A learner whose addition as a voter committed (it must now run as one)."""
        if not self.learner:
            return False
        voters, pending = self.membership()
        return self.self_node.id in voters and not pending

    def settled(self) -> bool:
        """A leader that applied its term's no-op: it knows every committed entry."""
        noop = self._SyncObj__noopIDx  # type: ignore[attr-defined]
        return self._isLeader() and noop is not None and self.raftLastApplied >= noop

    # pysyncobj calls this (name-mangled) for every committed entry, in order.
    def _SyncObj__doApplyCommand(self, command: bytes) -> dict[str, Any] | None:  # noqa: N802
        index = self.raftLastApplied + 1
        if command and command[0] == _MEMBERSHIP_BYTE:
            # Already applied when appended; this matters when a journal is replayed.
            req = self._SyncObj__parseChangeClusterRequest(command)
            if req is not None:
                self._SyncObj__doChangeCluster(req)  # type: ignore[attr-defined]
                record = getattr(self.machine, "apply_membership", None)
                if record is not None:  # the meta group keeps its voter set in its state
                    record(index, req[0], req[1])
            return None
        if not command or command[0] != _REGULAR_BYTE:
            return None  # no-op and version entries carry no state
        result = self.machine.apply(index, command[1:])
        if result is not None and result.get("code") == "storage_full":
            raise StorageStalled(f"group {self.group_id}: entry {index} does not fit")
        self._on_applied(self.group_id, index, result)
        return result

    def hold_elections(self, seconds: float) -> None:
        """Do not stand for election for a while (a replica that cannot apply must not lead)."""
        from pysyncobj.monotonic import monotonic

        self._SyncObj__raftElectionDeadline = monotonic() + seconds  # type: ignore[attr-defined]

    @property
    def transport(self) -> GroupTransport:
        return self._SyncObj__transport  # type: ignore[attr-defined]

    def state(self) -> int:
        return self._SyncObj__raftState  # type: ignore[attr-defined]

    def leader_id(self) -> str | None:
        leader = self._getLeader()
        return None if leader is None else leader.id

    def send_append_entries(self) -> None:
        """Replicate new entries (or a new commit index) now, not at the next heartbeat."""
        self._SyncObj__sendAppendEntries()  # type: ignore[attr-defined]

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
        log = self._SyncObj__raftLog  # type: ignore[attr-defined]
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

    def member_ids(self) -> set[str]:
        """The other voters of this group as pysyncobj knows them now."""
        return {n.id for n in self._SyncObj__otherNodes}  # type: ignore[attr-defined]

    def last_log_index(self) -> int:
        return self._SyncObj__raftLog[-1][1]  # type: ignore[attr-defined]
