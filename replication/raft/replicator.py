"""RaftReplicator: P partition groups plus one meta group, one Raft thread.

Every group of the node is ticked by a single thread (pysyncobj with
``autoTick=False``), and all of them share the node's one peer port
(``PeerMux``). The event loop never blocks on Raft: proposals and received
frames reach the Raft thread through one queue, and results come back with
``call_soon_threadsafe``.

Durability (``durability: sync``): a group's journal is fsynced before any
message of that group leaves the node and before each tick, so an entry is on
disk on the leader before followers see it, and on a follower before it
acknowledges it; a write is acknowledged only after a majority acknowledged
and the proposer applied it. LMDB itself is written without fsync in this
mode: after a crash, replaying the durable journal (idempotent by index)
rebuilds whatever LMDB lost.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import shutil
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hanzo_tasks.protocol.channels import FORWARD, RAFT
from hanzo_tasks.replication.base import (
    ChannelHandler,
    LeadershipListener,
    Listener,
    NodeReplicator,
    NotLeader,
    NotReplica,
    PeerListener,
    ReadIndexUnavailable,
    Result,
)
from hanzo_tasks.replication.raft import codec, faults
from hanzo_tasks.replication.raft.group import (
    ENTRY_OVERHEAD,
    IDLE_ELECTION_FACTOR,
    REGULAR,
    ApplyFailed,
    GroupTransport,
    RaftGroup,
    membership_command,
)
from hanzo_tasks.replication.raft.journal import DurableJournal, JournalError
from hanzo_tasks.replication.raft.snapshots import LmdbSnapshotter
from hanzo_tasks.replication.raft.transport import PeerMux
from hanzo_tasks.replication.rpc import PeerRpc, PeerUnavailable, RemoteError
from hanzo_tasks.shard import (
    BATCH_OVERHEAD,
    STORAGE_FULL,
    PartitionStore,
    StateMachine,
    encode_batch,
)
from hanzo_tasks.shard.meta import MetaMachine, initial_meta_voters
from pysyncobj import SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import Node

_T = TypeVar("_T")

log = logging.getLogger("tasks.raft")

LEADER = 2
FRAME_MARGIN = 64 << 10  # an AppendEntries' fields besides its entries, with room to spare
# A replica opened ahead of its addition to a group (prepare_replica) is not
# dropped for not being in the layout for this long: the keeper adds it, waits
# for the commit and records it well within.
JOIN_GRACE = 60.0
IDLE_TICK = 0.1  # s between ticks of an idle group
COALESCE_MAX = 256  # commands in one shared entry at most (the apply batch's bound)
DROP_CHECK_EVERY = 0.5
# How long a node with no meta state asks its peers for the meta voters
# (joining a running cluster, or bootstrapping a new one with them).
META_VOTERS_WAIT = 3.0
# What a meta learner (a pysyncobj read-only node) may send a voter.
# (snapshot_ack: a learner installs images too; term_notice: it learned a newer term from a leader.)
LEARNER_SENDS = frozenset({"next_node_idx", "apply_command", "snapshot_ack", "term_notice"})
FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}
# A stalled replica does not stand for election until it has heard no leader
# for this many (minimum) election timeouts: the others, which can apply, get
# several rounds first, yet a group whose only up-to-date log is on the
# stalled replica is not leaderless for ever.
STALL_GRACE_ELECTIONS = 10


class RaftReplicator:
    """P partition groups and a meta group, one Raft thread, one peer port.

    Implements ``NodeReplicator``: the Replicator boundary and the control of
    the cluster it is a member of."""

    clustered = True

    def __init__(
        self,
        data_dir: str | Path,
        *,
        node_id: str,
        listen: str,
        peers: Mapping[str, str],
        secret: bytes,
        partitions: int = 16,
        election_timeout_ms: int = 500,
        heartbeat_interval_ms: int = 100,
        propose_timeout_ms: int = 5000,
        sync: bool = True,
        map_size: int = 64 << 20,
        map_size_max: int = 32 << 30,
        reserve_disk: int = 0,
        max_frame: int = 16 << 20,
        snapshot_every: int = 10_000,
        compact_bytes: int = 64 << 20,
        await_layout: bool = False,
        idle_after_ms: int = 30_000,
        idle_heartbeat_ms: int = 3_000,
        peer_limits: Mapping[str, Any] | None = None,
        tls: tuple[ssl.SSLContext, ssl.SSLContext] | None = None,
    ) -> None:
        self.node_id = node_id
        self._peer_limits = dict(peer_limits or {})  # PeerMux's handshake limits (listeners.peer_*)
        self.partitions = partitions
        self.meta_group = partitions  # the meta group's tag follows the partitions
        self.data_dir = Path(data_dir)
        self.peer_addrs = {pid: addr for pid, addr in peers.items() if pid != node_id}
        self._listen = listen
        self._secret = secret
        self._sync = sync
        self._max_frame = max_frame
        self._tls = tls  # (listener, dialer) contexts of peer mutual TLS (PeerMux)
        # The largest command a group takes: one AppendEntries of it (with the
        # message's own fields and the frame header) fits in one peer frame.
        # pysyncobj would pickle a larger entry into "transmissions".
        self.max_entry = max_frame - FRAME_MARGIN
        self._snapshot_every = snapshot_every
        # Compaction is also due when a group's log (kept in memory by pysyncobj
        # as well as on disk) outgrows this, e.g. after a migration's chunks.
        self._compact_bytes = compact_bytes
        self._forced_at: dict[int, float] = {}
        self.propose_timeout = propose_timeout_ms / 1000.0
        self.reads_by_index = 0  # linearizable read points reached without a log entry
        # Quiet groups (RaftGroup.go_idle): a group led here with no write or read
        # for idle_after heartbeats every idle_heartbeat, and is ticked less often.
        self.idle_after = idle_after_ms / 1000.0
        self.idle_heartbeat = idle_heartbeat_ms / 1000.0
        self._active_at: dict[int, float] = {}
        self._ticked_at: dict[int, float] = {}
        self.coalesce = True  # proposals waiting together share one entry (see _flush_proposals)
        self.coalesced = 0  # proposals that went out inside a shared entry
        self._proposed: dict[int, list[tuple[bytes, Any]]] = {}
        self._read_tickets: dict[tuple[int, bool], _ReadTicket] = {}
        self._timings = (election_timeout_ms / 1000.0, heartbeat_interval_ms / 1000.0)
        self._store_opts = {"map_size": map_size, "map_size_max": map_size_max, "reserve_disk": reserve_disk}
        # Groups this node holds a replica of: the meta group always, partitions
        # by their replica sets (every partition when none are given). Keyed by
        # group; a partition joins or leaves as the meta group's layout changes.
        self._stores: dict[int, PartitionStore] = {}
        self._machines: dict[int, StateMachine | MetaMachine] = {}
        self._journals: dict[int, DurableJournal] = {}
        self._snapshotters: dict[int, LmdbSnapshotter] = {}
        self._groups: dict[int, RaftGroup] = {}
        self._open_store(partitions)
        # The layout comes from the meta group: until this node has applied the
        # cluster's bootstrap (meta.init) it holds no partition, and serves none
        # from an empty store. Clusters bootstrapped before layouts were recorded
        # have every member replicate every partition.
        # ``await_layout`` is what a node asks for; without it (a replicator used
        # on its own) an unbootstrapped cluster has every peer in every group.
        self._replicas: dict[int, tuple[str, ...]] = {}
        everyone = tuple(sorted(self.meta.members())) or tuple(sorted(set(self.peer_addrs) | {node_id}))
        if self.meta.partitions() is not None:
            stored = self.meta.replica_sets()
            self._replicas = {p: tuple(stored.get(p) or everyone) for p in range(partitions)}
        elif not await_layout:
            self._replicas = dict.fromkeys(range(partitions), everyone)
        for p, nodes in self._replicas.items():
            if node_id in nodes:
                self._open_store(p)
        self._inbox: queue.SimpleQueue[tuple[Any, ...]] = queue.SimpleQueue()  # (kind, ...) for the Raft thread
        self._listeners: list[Listener] = []
        self._leadership_listeners: list[LeadershipListener] = []
        self._peer_listeners: list[PeerListener] = []
        self._channel_handlers: dict[int, ChannelHandler] = {}
        self.stalled: set[int] = set()  # groups whose next committed entry does not fit here
        self._stalled_since: dict[int, float] = {}
        self._handover_at: dict[int, float] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._stopping = False
        # Liveness (issue 23): why this replicator cannot go on (None while it
        # can), counted by kind; errors it logged and contained; when the Raft
        # thread last went round its loop.
        self.fatal: str | None = None
        self.fatal_kind: str | None = None  # "raft_thread", "journal" or "apply" (tasks_fatal_errors_total)
        self.contained_errors = 0
        self.loop_at = time.monotonic()
        self._leading: list[bool] = [False] * (partitions + 1)
        self._leaders: list[str | None] = [None] * (partitions + 1)
        self._heard: list[dict[str, float]] = [{} for _ in range(partitions + 1)]
        # Voters of each group besides this node, as last seen by the Raft thread
        # (a copy the event loop may read without racing pysyncobj's own sets).
        self._members: list[frozenset[str]] = [frozenset(self.peer_addrs)] * (partitions + 1)
        self.mux: PeerMux | None = None
        self.rpc = PeerRpc(lambda peer, body: self.send_peer(peer, FORWARD, body))
        self.rpc.register("propose", self._serve_propose)
        self.rpc.register("membership", self._serve_membership)
        self.rpc.register("progress", lambda peer, args: self.group_progress(int(args["g"])))
        self.rpc.register("leaders", self._serve_leaders)
        self.rpc.register("transfer", self._serve_transfer)
        self.rpc.register("voters", lambda peer, args: self.group_membership(int(args["g"])))
        self.rpc.register("prepare", self._serve_prepare)
        self.rpc.register("meta_voters", self._serve_meta_voters)
        self.rpc.register("read_index", self._serve_read_index)
        self._promoting = False  # a learner's promotion to meta voter is queued
        self._settling: asyncio.Task[None] | None = None  # a guessed meta voter asking the members (start)
        self._joining: dict[int, float] = {}  # groups opened ahead of their addition (prepare_replica)
        self._drops: dict[int, asyncio.Task[None]] = {}  # groups left by the layout: dropped once removal is committed
        self._leader_hint: dict[int, str] = {}  # partitions held elsewhere: who answered last
        self.forwarded = 0
        self.proposals = 0
        self.proposal_errors = 0
        self.leader_changes = 0
        self.leader_changes_by_kind: dict[str, int] = {"meta": 0, "partition": 0}
        self.outcomes: dict[tuple[str, str], int] = {}
        self.bad_messages = 0

    # ---- lifecycle ---------------------------------------------------------

    def _conf(self, g: int) -> SyncObjConf:
        election, heartbeat = self._timings
        return SyncObjConf(
            autoTick=False,
            raftMinTimeout=election,
            raftMaxTimeout=election * 2,
            appendEntriesPeriod=heartbeat,
            appendEntriesUseBatch=True,
            appendEntriesBatchSizeBytes=self.max_entry,  # a batch fits one peer frame (RaftGroup.__getEntries)
            connectionTimeout=max(3.5, election * 2),
            leaderFallbackTimeout=max(election * 2, heartbeat * 4),
            logCompactionMinEntries=max(2, self._snapshot_every),
            logCompactionMinTime=1e9,  # compaction is driven by entries, not time
            logCompactionBatchSize=1 << 20,  # snapshot install chunk size
            # RaftGroup replaces pysyncobj's Serializer with the snapshotter; these
            # only tell pysyncobj that the state is serialized outside it.
            fullDumpFile=str(self._snapshotters[g].path),
            serializer=_unused_hook,
            deserializer=_unused_hook,
            commandsWaitLeader=True,  # wait (up to propose_timeout) through an election
            dynamicMembershipChange=True,
            useFork=False,
            journalFile=self._journals[g],
        )

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.mux = PeerMux(
            self.node_id,
            self._listen,
            self.peer_addrs,
            self._secret,
            on_frame=self._on_frame,
            on_peer_up=lambda p: self._peer_change(p, True),
            on_peer_down=lambda p: self._peer_change(p, False),
            max_frame=self._max_frame,
            **self._peer_limits,
            tls=self._tls,
        )
        await self.mux.start()
        voters, known = self._meta_role_at_start()
        self._make_group(self.meta_group, sorted(n for n in voters if n != self.node_id),
                         learner=self.node_id not in voters)
        if not known and self.node_id in voters:
            self._groups[self.meta_group].hold_elections(META_VOTERS_WAIT + 60.0)  # until _settle_meta_role
            self._settling = asyncio.get_running_loop().create_task(self._settle_meta_role(), name="meta-role")
        for p in range(self.partitions):
            if p in self._stores:
                self._make_group(p, [n for n in self._replicas[p] if n != self.node_id])
        self._running = True
        self._thread = threading.Thread(target=self._run, name="tasks-raft", daemon=True)
        self._thread.start()

    def _name(self, g: int) -> str:
        return "meta" if g == self.meta_group else str(g)

    def _open_store(self, g: int) -> PartitionStore:
        store = self._stores.get(g)
        if store is None:
            store = PartitionStore(self.data_dir / "partitions" / self._name(g), sync=False, **self._store_opts)
            if store.lost_on_reboot:
                log.warning("group %s: the machine went down without this store being closed; "
                            "rebuilding it from its snapshot image and the Raft journal", self._name(g))
                LmdbSnapshotter(store, self._snapshot_path(g)).rebuild_store()
            self._machines[g] = MetaMachine(store) if g == self.meta_group else StateMachine(store)
            self._stores[g] = store
        return store

    def _snapshot_path(self, g: int) -> Path:
        return self.data_dir / "raft" / f"{self._name(g)}.snapshot"

    def _meta_role_at_start(self) -> tuple[list[str], bool]:
        """The meta group's voters this node starts with (it is a learner when
        not among them), and whether that is known rather than guessed.

        Known from its own meta state when it has one (clusters bootstrapped
        before voters were recorded have every member vote). A node with none
        either bootstraps a new cluster with its peers, whose static list
        decides (``initial_meta_voters``, as ``meta.init`` records it), or
        joins a running one, whose members know: ``_settle_meta_role`` asks
        them, while a guessed voter holds back from elections (a node that
        stands for election wrongly inflates its term and stops following the
        leader). A learner needs no such care: once its addition as a voter
        is in the log it runs as one (``_check_promoted``)."""
        everyone = sorted(set(self.peer_addrs) | {self.node_id})
        recorded = self.meta.voters()
        if recorded is not None:
            return recorded, True
        if self.meta.partitions() is not None:
            return everyone, True
        return initial_meta_voters(everyone), False

    async def _settle_meta_role(self) -> None:
        """A guessed voter with no meta state asks its peers (the links are still
        being dialled) until one answers with the cluster's voters, every peer
        said it has none (a new cluster), or the wait is over; it becomes a
        learner when the cluster's voters do not include it, and stands for
        election from then on otherwise."""
        unanswered = set(self.peer_addrs)
        deadline = time.monotonic() + META_VOTERS_WAIT
        voters: list[str] | None = None
        try:
            while unanswered and voters is None and time.monotonic() < deadline and self._running:
                for peer in sorted(unanswered):
                    try:
                        answer = await self.rpc.call(peer, "meta_voters", {}, 1.0)
                    except (PeerUnavailable, TimeoutError, RemoteError):
                        continue
                    unanswered.discard(peer)
                    if isinstance(answer, dict) and answer.get("bootstrapped"):
                        got = answer.get("voters")
                        voters = list(got) if isinstance(got, list) and got else [*self.peer_addrs, self.node_id]
                        break
                else:
                    await asyncio.sleep(0.1)
        except Exception:  # noqa: BLE001 - never leave the hold on: stand for election as guessed
            log.exception("asking the members for the meta voters failed")
        learner = voters is not None and self.node_id not in voters

        def settle() -> None:
            grp = self._groups.get(self.meta_group)
            if grp is None or grp.learner:
                return
            if learner:
                self._rebuild_meta(sorted(voters or ()), learner=True)
                log.warning("this node joined a running cluster as a learner of the meta group")
            else:
                grp.hold_elections(self._timings[0])

        self._inbox.put(("call", settle))

    async def _serve_meta_voters(self, peer: str, args: Any) -> Any:
        return {"bootstrapped": self.meta.partitions() is not None, "voters": self.meta.voters()}

    def meta_learner(self) -> bool:
        """Whether this node follows the meta group without a vote."""
        grp = self._groups.get(self.meta_group)
        return grp is not None and grp.learner

    def _check_promoted(self) -> None:
        """On the Raft thread after each tick of a learning meta group: once its
        addition as a voter committed, run it as a voter (pysyncobj cannot turn
        a read-only node into one: the group is rebuilt from its journal,
        snapshot and store, which stay)."""
        grp = self._groups.get(self.meta_group)
        if grp is None or self._promoting or not grp.promoted():
            return
        self._promoting = True
        self._inbox.put(("call", self._promote))

    def _promote(self) -> None:
        grp = self._groups.get(self.meta_group)
        self._promoting = False
        if grp is None or not grp.learner:
            return
        voters, _ = grp.membership()
        self._rebuild_meta(sorted(voters), learner=False)
        log.warning("this node is now a voter of the meta group (was a learner)")

    def _rebuild_meta(self, voters: list[str], learner: bool) -> None:
        """Rebuild the meta group's pysyncobj object as a voter or a learner (on
        the Raft thread) from its journal, snapshot and store, which stay."""
        g = self.meta_group
        snapshotter = self._snapshotters.get(g)
        worker = getattr(snapshotter, "_thread", None)
        if worker is not None:
            worker.join(30)  # an image being written belongs to the old object's serializer
        if snapshotter is not None:
            snapshotter.close()  # open transmissions; the new object streams afresh
        journal = self._journals.pop(g, None)
        if journal is not None:
            journal._destroy()  # flushed and closed: the new object reopens it
        self._make_group(g, [n for n in voters if n != self.node_id], learner=learner)

    def _make_group(self, g: int, peer_ids: list[str], hold: float = 0.0, learner: bool = False) -> None:
        """Open group ``g``'s journal, snapshot file and pysyncobj object (at start,
        or on the Raft thread when this node becomes a replica)."""
        self._open_store(g)
        jdir = self.data_dir / "raft"
        jdir.mkdir(parents=True, exist_ok=True)
        self._journals[g] = DurableJournal(str(jdir / f"{self._name(g)}.journal"), sync=self._sync)
        self._snapshotters[g] = LmdbSnapshotter(self._stores[g], self._snapshot_path(g))
        grp = RaftGroup(g, self.node_id, sorted(peer_ids), self._conf(g), self._machines[g],
                        self._transport_factory(g), self._on_applied, self._snapshotters[g], learner=learner)
        if learner:
            grp.addOnTickCallback(self._check_promoted)
        if hold > 0:
            # A new replica waits for the leader's first append instead of
            # standing for election (and raising the group's term) at once.
            grp.hold_elections(hold)
        self._members[g] = frozenset(peer_ids)
        self._groups[g] = grp
        mux = self.mux
        if mux is not None:
            # The meta group streams to connected learners too (GroupTransport).
            for peer in (sorted(self.peer_addrs) if g == self.meta_group else peer_ids):
                if mux.is_connected(peer):
                    grp.transport.node_up(grp.nodes.get(peer) or Node(peer))

    def _drop_group(self, g: int) -> None:
        """This node is no longer a replica of partition ``g`` (its removal is
        committed in the group): stop the group and delete its local copy."""
        grp = self._groups.pop(g, None)
        if grp is None:
            return
        journal = self._journals.pop(g, None)
        self._snapshotters.pop(g, None)
        store = self._stores.pop(g, None)
        self._machines.pop(g, None)
        self.stalled.discard(g)
        try:
            grp.transport.destroy()
        except Exception:
            log.debug("transport of group %d: destroy failed", g, exc_info=True)
        if journal is not None:
            try:
                journal._destroy()
            except Exception:
                log.debug("journal of group %d: close failed", g, exc_info=True)
        if store is not None:
            store.close()
            shutil.rmtree(store.path, ignore_errors=True)
        jdir = self.data_dir / "raft"
        for suffix in (".journal", ".snapshot"):
            for f in jdir.glob(f"{self._name(g)}{suffix}*"):
                f.unlink(missing_ok=True)
        self._track_leader(g, None, False)
        log.info("dropped the replica of partition %d (no longer in its replica set)", g)

    def _transport_factory(self, g: int) -> Any:
        mux = self.mux
        journal = self._journals[g]
        assert mux is not None

        def send(peer: str, body: bytes) -> bool:
            return mux.send(peer, RAFT, g, body)

        def factory(syncObj: Any, selfNode: Any, otherNodes: Any) -> GroupTransport:
            return GroupTransport(syncObj, selfNode, otherNodes, send=send, flush=journal.flush,
                                  connected=mux.is_connected, learners=g == self.meta_group)

        return factory

    async def stop(self) -> None:
        if self._stopping or self._thread is None:
            return  # stopped, or never started
        self._stopping = True
        self._running = False
        self.rpc.cancel_all()
        for task in [*self._drops.values(), *([self._settling] if self._settling else [])]:
            task.cancel()
        self._inbox.put(("stop", None))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        if self.mux is not None:
            await self.mux.stop()
        for j in self._journals.values():
            try:
                j._destroy()  # flush, persist the commit index, close
            except Exception:
                log.exception("journal close at stop failed")
        for s in self._stores.values():
            try:
                s.env.sync(True)
            except Exception:
                pass
            s.close()

    # ---- the boundary ------------------------------------------------------

    async def propose(self, group: int, command: bytes) -> Result:
        if self.fatal is not None:
            return {"ok": False, "code": "unavailable", "message": f"replication failed on {self.node_id}: {self.fatal}"}
        if not self._running:
            raise NotLeader("replicator stopped")
        if not self.is_local(group):
            return await self._forward_propose(group, command)
        if self._stores[group].disk_full() or group in self.stalled:
            return STORAGE_FULL  # refused before proposing: nothing was written anywhere
        if len(command) + ENTRY_OVERHEAD > self.max_entry:
            return {"ok": False, "code": "too_large",
                    "message": f"the command is {len(command)} bytes; a log entry holds at most "
                               f"{self.max_entry - ENTRY_OVERHEAD} (limits.max_frame)"}
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Result] = loop.create_future()

        def done(res: Any, err: int) -> None:  # on the Raft thread
            loop.call_soon_threadsafe(_resolve, fut, res, err)

        self.proposals += 1
        kind = "meta" if group == self.meta_group else "partition"
        self._inbox.put(("propose", group, REGULAR + command, done))
        try:
            res = await asyncio.wait_for(asyncio.shield(fut), self.propose_timeout)
            outcome = "ok" if res.get("ok") or res.get("code") not in ("unavailable",) else "rejected"
            self.outcomes[(kind, outcome)] = self.outcomes.get((kind, outcome), 0) + 1
            return res
        except TimeoutError:
            self.outcomes[(kind, "timeout")] = self.outcomes.get((kind, "timeout"), 0) + 1
            self.proposal_errors += 1
            return {"ok": False, "code": "unavailable",
                    "message": "the write did not commit in time; its outcome is unknown, retry with the same requestId"}

    # ---- replica sets -----------------------------------------------------------

    def replicas(self, group: int) -> tuple[str, ...]:
        """The nodes holding ``group`` (every node for the meta group; none before the layout is known)."""
        if group == self.meta_group:
            return tuple(sorted(set(self.peer_addrs) | {self.node_id}))
        return self._replicas.get(group, ())

    def is_local(self, group: int) -> bool:
        """Whether this node holds a replica of ``group`` and the layout says so
        (may read its store). A group opened ahead of its addition, or left by
        the layout and waiting for its removal to commit, serves nothing."""
        if group not in self._groups:
            return False
        return group == self.meta_group or self.node_id in self._replicas.get(group, ())

    def local_partitions(self) -> list[int]:
        return sorted(g for g in list(self._groups) if g != self.meta_group)

    def set_replica_sets(self, layout: Mapping[int, Sequence[str]]) -> None:
        """The meta group's layout changed: open the partitions this node now
        replicates and drop the ones it no longer does. A replica added to a
        running group holds back from elections until the leader reaches it
        (at bootstrap, when the partition was not known before, it does not).

        A replica is dropped (its log and store deleted) only once a leader of
        the group confirms that its removal committed: a layout recorded for a
        removal that did not commit must not leave a voter without its log.
        Called again every round (``ReplicaKeeper.sync_local``), so a drop that
        could not be confirmed yet is retried."""
        for p, nodes in layout.items():
            if not 0 <= p < self.partitions or not nodes:
                continue
            nodes = tuple(nodes)
            if nodes != self._replicas.get(p):
                hold = 3 * self._timings[0] if p in self._replicas else 0.0
                self._replicas[p] = nodes
                if self.node_id in nodes:
                    self._joining.pop(p, None)  # recorded: a replica like any other
                    self._inbox.put(("layout", p, nodes, hold))
            if self.node_id not in nodes and p in self._groups:
                self._drop_once_removed(p)

    async def prepare_replica(self, group: int, node_id: str, nodes: Sequence[str], timeout: float = 5.0) -> None:
        """Have ``node_id`` open ``group`` (its peers: ``nodes``) before it is made a
        voter, so that it takes part in committing its own addition: a set of
        one (or of two with one down) cannot commit the addition without it,
        and the replica catches up from the moment the leader appends it. It
        serves nothing until the layout records it (``is_local``)."""
        if node_id == self.node_id:
            self._open_joining(group, nodes)
            return
        await self.rpc.call(node_id, "prepare", {"g": group, "nodes": list(nodes)}, timeout)

    async def _serve_prepare(self, peer: str, args: Any) -> Any:
        group, nodes = args["g"], args["nodes"]
        if not (isinstance(group, int) and 0 <= group < self.partitions and isinstance(nodes, list)
                and nodes and all(isinstance(n, str) and n for n in nodes)):
            raise ValueError("bad prepare")
        self._open_joining(group, nodes)
        return True

    def _open_joining(self, group: int, nodes: Sequence[str]) -> None:
        if self.node_id in self._replicas.get(group, ()):
            return  # a recorded replica: holds it already (or is about to)
        self._joining[group] = time.monotonic()  # also holds off a drop being confirmed meanwhile
        if group in self._groups:
            return
        self._inbox.put(("layout", group, (*[n for n in nodes if n != self.node_id], self.node_id),
                         3 * self._timings[0]))

    def _joining_now(self, group: int) -> bool:
        joined = self._joining.get(group)
        return joined is not None and time.monotonic() - joined < JOIN_GRACE

    def _drop_once_removed(self, group: int) -> None:
        if self._joining_now(group):
            return  # its addition is under way
        if group in self._drops or self._loop is None or not self._running:
            return
        self._drops[group] = self._loop.create_task(self._confirm_and_drop(group), name=f"drop-{group}")

    async def _confirm_and_drop(self, group: int) -> None:
        try:
            while self._running and group in self._groups and self.node_id not in self._replicas.get(group, ()):
                if await self._removal_committed(group) and not self._joining_now(group):
                    self._inbox.put(("layout", group, self._replicas.get(group, ()), 0.0))
                    return
                await asyncio.sleep(DROP_CHECK_EVERY)
        finally:
            self._drops.pop(group, None)

    async def _removal_committed(self, group: int) -> bool:
        """Whether a leader of ``group`` that knows every committed entry (its
        term's no-op applied) has this node out of the group, with no
        membership change in flight. A lagging follower's view is not enough:
        it may not have applied this node's addition yet."""
        leader = self._leader_hint.get(group)
        asked = [*([leader] if leader else []), *self.peers_for(group)]
        for peer in dict.fromkeys(asked):
            if peer == self.node_id:
                continue
            try:
                view = await self.rpc.call(peer, "voters", {"g": group}, 2.0)
            except (PeerUnavailable, TimeoutError, RemoteError):
                continue
            if isinstance(view, dict) and view.get("settled"):
                return not view.get("pending") and self.node_id not in view.get("voters", ())
        return False

    def peers_for(self, group: int, exclude: Sequence[str] = ()) -> list[str]:
        """The other replicas of ``group``, in the order to ask them: responsive
        ones first, then the leader (as this node sees it, or as a replica last
        named it), then by id. The one place every node-to-replica call picks
        its peer (proposals, service calls, reads, migration reads)."""
        leader = self._leaders[group] or self._leader_hint.get(group)
        skip = {self.node_id, *exclude}
        return sorted((n for n in self.replicas(group) if n not in skip),
                      key=lambda n: (not self.peer_responsive(n), n != leader, n))

    def leader_hint(self, group: int) -> str | None:
        """The leader of a partition held elsewhere, as a replica last reported it."""
        return self._leader_hint.get(group)

    def note_leader(self, group: int, leader: str) -> None:
        if group not in self._groups:
            self._leader_hint[group] = leader

    async def _forward_propose(self, group: int, command: bytes) -> Result:
        """A partition this node does not hold: a replica proposes it for us.

        The leader a replica last named is tried first. A peer we cannot reach
        (the request was not sent) is skipped; a sent request that gets no
        answer in time has an unknown outcome, reported as ``unavailable`` like
        a local proposal that timed out (retrying with the same requestId is safe).
        """
        full: Result | None = None
        for peer in self.peers_for(group):
            try:
                answer = await self.rpc.call(peer, "propose", {"g": group, "c": command}, self.propose_timeout + 1.0)
            except PeerUnavailable:
                continue
            except TimeoutError:
                return {"ok": False, "code": "unavailable",
                        "message": "the write did not commit in time; its outcome is unknown, retry with the same requestId"}
            except RemoteError as e:
                return {"ok": False, "code": "unavailable", "message": f"replica {peer}: {e}"}
            self.forwarded += 1
            if answer.get("leader"):
                self._leader_hint[group] = answer["leader"]
            res = answer.get("res") or {}
            if res.get("code") == "not_replica":
                continue  # its layout changed under us: ask the next one
            if res.get("code") == "storage_full":
                full = res  # refused by that replica's disk before proposing: another may take it
                continue
            return res
        return full or {"ok": False, "code": "unavailable", "message": f"no replica of partition {group} is reachable"}

    async def _serve_propose(self, peer: str, args: Any) -> Any:
        group, command = args["g"], args["c"]
        if not isinstance(group, int) or not isinstance(command, bytes):
            raise ValueError("bad propose")
        if not self.is_local(group):
            return {"res": {"ok": False, "code": "not_replica", "message": f"{self.node_id} does not hold {group}"}}
        res = await self.propose(group, command)
        return {"res": res, "leader": self._leaders[group]}

    async def _serve_transfer(self, peer: str, args: Any) -> Any:
        """Hand the leadership of a partition to another voter (its replica set is shrinking)."""
        group = int(args["g"])
        if group in self._groups and self._leading[group]:
            self.transfer_leadership(group, None)
        return True

    async def _serve_leaders(self, peer: str, args: Any) -> Any:
        """The leaders of the partitions this node holds, as it sees them."""
        return {str(p): self._leaders[p] for p in self.local_partitions()}

    async def _serve_membership(self, peer: str, args: Any) -> Any:
        group, op, node = args["g"], args["op"], args["node"]
        if not self.is_local(group):
            raise NotReplica(f"{self.node_id} does not hold partition {group}")
        await self.change_membership(op, node, groups=[group], timeout=float(args.get("timeout", 20.0)))
        return True

    async def change_group_membership(self, group: int, op: str, node_id: str, *, timeout: float = 20.0) -> None:
        """Add or remove a voter of one group, from any node (a replica does it).

        A node never removes itself: once the change commits, the leader stops
        sending it entries, so it would not see its own change commit. Another
        replica does it, and sees it. A replica opened ahead of its own addition
        is not a voter yet: a voter does it."""
        if self.is_local(group) and not (op == "rem" and node_id == self.node_id):
            await self.change_membership(op, node_id, groups=[group], timeout=timeout)
            return
        last: Exception | None = None
        for peer in self.peers_for(group, exclude=(node_id,)):
            try:
                await self.rpc.call(peer, "membership", {"g": group, "op": op, "node": node_id, "timeout": timeout},
                                    timeout + 5.0)
                return
            except (PeerUnavailable, TimeoutError, RemoteError) as e:
                last = e
        raise TimeoutError(f"membership change {op} {node_id} in group {group}: {last}")

    async def group_membership(self, group: int) -> dict[str, Any] | None:
        """This node's view of ``group``'s voters as of its applied index (so
        committed), whether a membership change is in its log beyond that, and
        whether it is a leader that knows every committed entry ("settled": its
        term's no-op applied), with the voters that answered it lately
        ("answering", on a leader). None: not held. Read on the Raft thread."""
        window = 2 * self._timings[0]

        def read() -> dict[str, Any] | None:
            grp = self._groups.get(group)
            if grp is None:
                return None
            voters, pending = grp.membership()
            wide = window + IDLE_ELECTION_FACTOR * grp.idle_heartbeat  # an idle group's slow heartbeats
            return {"voters": sorted(voters), "pending": pending, "settled": grp.settled(),
                    "answering": sorted(grp.answering(wide)), "applied": grp.raftLastApplied}

        if group not in self._groups:
            return None
        return await self._on_raft_thread(read)

    async def _on_raft_thread(self, fn: Callable[[], _T], timeout: float = 5.0) -> _T:
        """Run ``fn()`` on the Raft thread (pysyncobj's state is not thread-safe) and return its result."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[_T] = loop.create_future()

        def run() -> None:
            try:
                res = fn()
            except Exception as e:  # noqa: BLE001 - handed to the caller
                loop.call_soon_threadsafe(_settle, fut, None, e)
            else:
                loop.call_soon_threadsafe(_settle, fut, res, None)

        self._inbox.put(("call", run))
        return await asyncio.wait_for(fut, timeout)

    # ---- linearizable reads (ReadIndex, see replication.raft.reads) ----------------

    async def read_index(self, group: int) -> int:
        """Wait until this replica may serve a linearizable read of ``group``.

        The leader confirms its authority with one heartbeat round (shared by
        every read waiting at that moment) and waits for its own apply; a
        follower asks the leader it knows for a confirmed read index, then
        waits until it has applied that far. ``ReadIndexUnavailable``: no such
        point without a log entry now (commit a barrier instead); ``NotLeader``:
        the leadership could not be confirmed in time (the node may be cut off).
        """
        if not self.is_local(group):
            raise NotReplica(f"{self.node_id} does not hold partition {group}")
        if self.fatal is not None or not self._running:
            raise ReadIndexUnavailable(f"replication is not running on {self.node_id}")
        if self._leading[group]:
            index = await self._raft_read(group, wait_applied=True)
            self.reads_by_index += 1
            return index
        leader = self._leaders[group]
        if leader is None or leader == self.node_id:
            raise ReadIndexUnavailable(f"partition {group} has no known leader")
        try:
            answer = await self.rpc.call(leader, "read_index", {"g": group}, self.propose_timeout)
        except (PeerUnavailable, TimeoutError, RemoteError) as e:
            raise ReadIndexUnavailable(f"read index from {leader}: {type(e).__name__}: {e}") from None
        got = answer.get("index") if isinstance(answer, dict) else None
        if not isinstance(got, int) or isinstance(got, bool):
            why = answer.get("error") if isinstance(answer, dict) else None
            raise ReadIndexUnavailable(f"read index from {leader}: {why or 'no index'}")
        await self._raft_wait(group, lambda cb: ("applied", group, got, cb))
        self.reads_by_index += 1
        return got

    async def _raft_read(self, group: int, wait_applied: bool) -> int:
        """A read point from this leader's group, shared by every read that asks
        before the Raft thread takes the request: the heartbeat round starts
        after the request is taken, so after each of them arrived."""
        loop = asyncio.get_running_loop()
        key = (group, wait_applied)
        ticket = self._read_tickets.get(key)
        if ticket is None or ticket.taken or ticket.fut.done():
            ticket = _ReadTicket(loop.create_future())
            self._read_tickets[key] = ticket
            fut = ticket.fut

            def done(index: int | None, why: str | None) -> None:  # on the Raft thread
                loop.call_soon_threadsafe(_settle_read, fut, index, why)

            def expire() -> None:
                if not fut.done():
                    fut.set_exception(NotLeader(
                        f"partition {group}: a read point was not reached within {self.propose_timeout:g} s "
                        "(the leadership could not be confirmed)"))

            timer = loop.call_later(self.propose_timeout, expire)

            def settled(f: asyncio.Future[int]) -> None:
                timer.cancel()
                if not f.cancelled():
                    f.exception()  # retrieved: nobody may be left to await it

            fut.add_done_callback(settled)
            self._inbox.put(("read", group, wait_applied, done, ticket))
        return await asyncio.shield(ticket.fut)

    async def _raft_wait(self, group: int, item: Callable[[Callable[[int | None, str | None], None]], tuple[Any, ...]]) -> int:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()

        def done(index: int | None, why: str | None) -> None:  # on the Raft thread
            loop.call_soon_threadsafe(_settle_read, fut, index, why)

        self._inbox.put(item(done))
        try:
            return await asyncio.wait_for(asyncio.shield(fut), self.propose_timeout)
        except TimeoutError:
            raise NotLeader(f"partition {group}: a read point was not reached within "
                            f"{self.propose_timeout:g} s (the leadership could not be confirmed)") from None

    async def _serve_read_index(self, peer: str, args: Any) -> Any:
        """A follower's read: this leader's confirmed read index (not waiting for its own apply)."""
        group = args["g"]
        if not isinstance(group, int) or not self.is_local(group):
            return {"error": f"{self.node_id} does not hold partition {group}"}
        try:
            return {"index": await self._raft_read(group, wait_applied=False)}
        except (ReadIndexUnavailable, NotLeader) as e:
            return {"error": str(e)}

    async def group_progress(self, group: int) -> dict[str, int] | None:
        """This node's applied index of ``group`` and the commit index it knows (None: not held)."""
        grp = self._groups.get(group)
        if grp is None:
            return None
        return {"applied": grp.raftLastApplied, "commit": grp.raftCommitIndex}

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_leadership(self, listener: LeadershipListener) -> None:
        """listener(group, is_leader) on the event loop whenever this node gains or loses a group."""
        self._leadership_listeners.append(listener)

    def is_leader(self, group: int) -> bool:
        return self._leading[group]

    def leader(self, group: int) -> str | None:
        return self._leaders[group]

    def store(self, group: int) -> PartitionStore:
        try:
            return self._stores[group]
        except KeyError:
            raise NotReplica(f"{self.node_id} holds no replica of partition {group}") from None

    def machine(self, group: int) -> StateMachine | MetaMachine:
        return self._machines[group]

    @property
    def meta(self) -> MetaMachine:
        machine = self._machines[self.meta_group]
        assert isinstance(machine, MetaMachine)
        return machine

    def voters(self, group: int) -> frozenset[str]:
        grp = self._groups.get(group)
        if grp is None:
            return frozenset(self._replicas.get(group, ()))
        return self._members[group] if grp.learner else self._members[group] | {self.node_id}

    def sees_quorum(self, group: int) -> bool:
        """SPEC §4.9: a leader heard from a majority, or a follower heard from its
        leader, within the last 2 x election timeout. Heartbeats are messages, so
        a paused or partitioned peer stops counting even with its TCP still open."""
        window = 2 * self._timings[0]
        grp = self._groups.get(group)
        if grp is not None and (grp.idle_heartbeat or grp.quiet):  # slow heartbeats of an idle group
            window += IDLE_ELECTION_FACTOR * grp.idle_heartbeat if grp.idle_heartbeat else grp.quiet
        now = time.monotonic()
        heard = self._heard[group]
        leader = self._leaders[group]
        if leader is None:
            return False
        if leader == self.node_id:
            voters = self._members[group]
            recent = sum(1 for p, t in list(heard.items()) if p in voters and now - t <= window)
            return recent + 1 > (len(voters) + 1) / 2
        return now - heard.get(leader, 0.0) <= window

    def group_status(self, group: int) -> dict[str, Any]:
        g = self._groups.get(group)
        if g is None:
            return {"leader": self._leader_hint.get(group), "appliedIndex": None, "commitIndex": None,
                    "term": None, "hasQuorum": None}
        return {
            "leader": self._leaders[group],
            "appliedIndex": g.raftLastApplied,
            "commitIndex": g.raftCommitIndex,
            "term": g.raftCurrentTerm,
            "hasQuorum": self.sees_quorum(group),
        }

    def snapshot_counts(self) -> dict[str, int]:
        return {
            "taken": sum(s.taken for s in list(self._snapshotters.values())),
            "installed": sum(s.installed for s in list(self._snapshotters.values())),
        }

    async def change_membership(
        self, op: str, node_id: str, *, timeout: float = 30.0, groups: Sequence[int] | None = None
    ) -> None:
        """Add ("add") or remove ("rem") a voter in every group this node holds (or
        in ``groups``), one group at a time; returns once each change is
        committed, raises TimeoutError when one did not commit by the deadline
        (its outcome is then unknown: the caller re-reads the group).

        A group takes one change at a time (``RaftGroup._SyncObj__changeCluster``)
        and none while its leader's first entry of the term is uncommitted;
        refused or unknown outcomes are retried until the deadline. pysyncobj
        reports success when this node applies the entry, so after its commit.
        A change already committed is a no-op; one only appended (pysyncobj's
        node set switches at append) is not done yet.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for g in (sorted(self._groups) if groups is None else groups):
            while True:
                view = await self.group_membership(g)
                if view is None:
                    break
                if node_id != self.node_id and not view["pending"] and (op == "add") == (node_id in view["voters"]):
                    break  # committed so (this node's own view never drops itself)
                fut: asyncio.Future[Result] = loop.create_future()

                def done(res: Any, err: int, _fut: asyncio.Future[Result] = fut) -> None:
                    loop.call_soon_threadsafe(_resolve, _fut, res, err)

                self._inbox.put(("propose", g, membership_command(op, node_id), done))
                try:
                    res = await asyncio.wait_for(asyncio.shield(fut), max(0.1, min(5.0, deadline - loop.time())))
                except TimeoutError:
                    res = {"ok": False}
                if res.get("ok"):
                    break  # applied here, so committed
                if loop.time() > deadline:
                    raise TimeoutError(f"membership change {op} {node_id} did not commit in group {g}")
                await asyncio.sleep(0.05)

    def set_peer_addresses(self, peers: Mapping[str, str]) -> None:
        """Whom the peer port dials and accepts (membership changes)."""
        self.peer_addrs = {pid: addr for pid, addr in peers.items() if pid != self.node_id}
        if self.mux is not None:
            self.mux.set_peers(self.peer_addrs)

    def transfer_leadership(self, group: int, to: str | None = None) -> None:
        self._inbox.put(("transfer", group, to))

    # ---- the Raft thread -----------------------------------------------------

    def on_peer_change(self, listener: PeerListener) -> None:
        """listener(peer_id, up) on the event loop when the link to a peer comes or goes."""
        self._peer_listeners.append(listener)

    def _peer_change(self, peer: str, up: bool) -> None:
        self._inbox.put(("up" if up else "down", peer))
        if not up:
            self.rpc.peer_down(peer)
        for listener in self._peer_listeners:
            try:
                listener(peer, up)
            except Exception:
                log.exception("peer listener failed")

    def on_channel(self, channel: int, handler: ChannelHandler) -> None:
        """``handler(peer_id, body)`` on the event loop for every frame of ``channel``.

        The peer port carries more than Raft (SPEC §8.7): node-level protocols
        such as dispatch relaying register here; frames are authenticated by the
        mux before they arrive.
        """
        if channel == RAFT:
            raise ValueError("the Raft channel belongs to the replicator")
        if channel == FORWARD:
            self.rpc.fallback = handler  # the channel is shared with node-to-node calls
            return
        self._channel_handlers[channel] = handler

    def send_peer(self, peer: str, channel: int, body: bytes) -> bool:
        """Queue one frame of a node-level channel for ``peer`` (False: not queued)."""
        mux = self.mux
        return mux is not None and peer != self.node_id and mux.send(peer, channel, 0, body)

    def peer_connected(self, peer: str) -> bool:
        mux = self.mux
        return mux is not None and mux.is_connected(peer)

    def peer_rejected(self) -> dict[str, int]:
        """Frames the peer port rejected, by reason (empty before start)."""
        mux = self.mux
        return dict(mux.rejected) if mux is not None else {}

    def peer_responsive(self, peer: str) -> bool:
        """Connected, and heard from (any group's Raft traffic, the meta group's
        heartbeats at least) within 2 x election timeout: a paused process keeps
        its TCP connections but goes quiet."""
        if not self.peer_connected(peer):
            return False
        window = 2 * self._timings[0]
        now = time.monotonic()
        return any(now - heard.get(peer, -1e9) <= window for heard in self._heard)

    def _on_frame(self, peer: str, channel: int, group: int, body: bytes) -> None:
        if channel == RAFT:
            self._inbox.put(("frame", peer, group, body))
            return
        if channel == FORWARD:
            self.rpc.on_frame(peer, body)
            return
        handler = self._channel_handlers.get(channel)
        if handler is not None:
            handler(peer, body)

    def _on_applied(self, group: int, index: int, result: dict[str, Any] | None) -> None:
        if result is None or result.get("code") == "storage_full" or not self._listeners:
            return
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._notify, group, index, result)

    def _notify(self, group: int, index: int, result: dict[str, Any]) -> None:
        for listener in self._listeners:
            try:
                listener(group, index, result)
            except Exception:
                log.exception("apply listener failed")

    def _handle(self, item: tuple[Any, ...], touched: set[int]) -> bool:
        kind = item[0]
        if kind == "frame":
            _, peer, group, body = item
            if not 0 <= group <= self.partitions:
                self.bad_messages += 1
                return True
            grp = self._groups.get(group)
            if grp is None:
                return True  # a group this node does not (or not yet) hold
            voter = peer in grp.member_ids()
            if not voter and peer not in grp.readonly_ids():
                return True  # not (yet, or any more) a voter of this group, nor a learner of it
            node = grp.nodes.get(peer) or Node(peer)
            try:
                msg = codec.decode(body)
            except codec.BadMessage as e:
                self.bad_messages += 1
                log.warning("dropped a raft message from %s: %s", peer, e)
                return True
            if not voter and msg["type"] not in LEARNER_SENDS:
                return True  # a learner acknowledges entries and forwards proposals, nothing else
            self._heard[group][peer] = time.monotonic()
            if msg["type"] == "timeout_now" and group in self.stalled:
                return True  # a replica that cannot apply must not take leadership over (balancer hand-over)
            grp.deliver(node, msg)
            touched.add(group)
        elif kind == "propose":
            _, group, data, cb = item
            self._proposed.setdefault(group, []).append((data, cb))  # _flush_proposals, after the drain
            self._activity(group)
            touched.add(group)
        elif kind == "layout":
            _, group, nodes, hold = item
            if self.node_id in nodes:
                if group not in self._groups:
                    self._make_group(group, [n for n in nodes if n != self.node_id], hold=hold)
                    touched.add(group)
            elif group in self._groups and self.node_id not in self._replicas.get(group, ()) \
                    and not self._joining_now(group):
                self._drop_group(group)  # queued once its removal was seen committed (_confirm_and_drop)
        elif kind == "up" or kind == "down":
            for grp in list(self._groups.values()):
                node = grp.nodes.get(item[1]) or Node(item[1])
                (grp.transport.node_up if kind == "up" else grp.transport.node_down)(node)
                if kind == "down" and grp.leader_id() == item[1]:
                    grp.leader_lost()
        elif kind == "transfer":
            _, group, to = item
            grp = self._groups.get(group)
            if grp is None:
                return True
            # The target is found among the current voters (``grp.nodes`` holds the
            # group's first peers only); one that is not a voter gets nothing,
            # rather than whoever pysyncobj picks. It takes over once it holds the whole log.
            grp.begin_transfer(to)
            touched.add(group)
        elif kind == "read":
            _, group, wait_applied, cb, ticket = item
            ticket.taken = True  # later reads need a round of their own
            grp = self._groups.get(group)
            if grp is None:
                cb(None, "not_leader")
                return True
            self._activity(group)
            grp.reads.request(cb, wait_applied)
            touched.add(group)  # the round starts at this tick
        elif kind == "applied":
            _, group, index, cb = item
            grp = self._groups.get(group)
            if grp is None:
                cb(None, "not_replica")
                return True
            grp.reads.wait_applied(index, cb)
        elif kind == "call":
            item[1]()
        elif kind == "stop":
            self._flush_proposals()
            return False
        return True

    def _activity(self, group: int) -> None:
        """A write or a read for ``group``: it is not idle (any more)."""
        self._active_at[group] = time.monotonic()
        grp = self._groups.get(group)
        if grp is not None and grp.idle_heartbeat:
            grp.wake()

    def _quiet_tick_due(self, g: int, now: float) -> bool:
        """An idle group (led here, or its leader said so) is ticked every
        IDLE_TICK s rather than every tick of the loop: its timers are seconds long."""
        grp = self._groups[g]
        if not (grp.idle_heartbeat or grp.quiet):
            return True
        return now - self._ticked_at.get(g, 0.0) >= IDLE_TICK

    def _flush_proposals(self) -> None:
        """Hand the proposals drained from the inbox to their groups: those that
        waited for one partition at the same moment share one Raft entry
        (``sys.batch``, answered command by command), so a busy partition pays
        the log append, the journal write and the replication of one entry for
        many commands, and never waits to gather them."""
        pending, self._proposed = self._proposed, {}
        for group, items in pending.items():
            grp = self._groups.get(group)
            if grp is None:
                for _, cb in items:
                    cb(None, FAIL_REASON.MISSING_LEADER)
                continue
            if len(items) == 1 or not self.coalesce or group == self.meta_group:
                for data, cb in items:
                    grp._applyCommand(data, cb)
                continue
            for chunk in self._batches(items):
                if len(chunk) == 1:
                    grp._applyCommand(*chunk[0])
                    continue
                self.coalesced += len(chunk)
                grp._applyCommand(REGULAR + encode_batch([data[1:] for data, _ in chunk]),
                                  _fan_out([cb for _, cb in chunk]))

    def _batches(self, items: list[tuple[bytes, Any]]) -> Iterator[list[tuple[bytes, Any]]]:
        """Runs of proposals whose batch fits one entry (``limits.max_frame``)."""
        room = self.max_entry - ENTRY_OVERHEAD - BATCH_OVERHEAD
        chunk: list[tuple[bytes, Any]] = []
        size = 0
        for item in items:
            cost = len(item[0]) + 5
            if chunk and (size + cost > room or len(chunk) >= COALESCE_MAX):
                yield chunk
                chunk, size = [], 0
            chunk.append(item)
            size += cost
        if chunk:
            yield chunk

    def _run(self) -> None:
        """The Raft thread.

        Messages and proposals wake the thread at once and tick only the groups
        they touch; every group is ticked at least every `tick_every` for its
        heartbeats and election timers (a fraction of the heartbeat interval).

        Liveness (issue 23): an exception while one inbox item is handled or one
        group is ticked is logged and contained (``_contain``): the other groups,
        and that group's next messages, go on. What cannot be undone in-process
        is fatal (``_fail``): a failed journal (after an OSError its file is in
        an unknown state), a failed apply, or an exception escaping this loop.
        The node then reports not-ready and exits; a restart recovers from disk.
        """
        tick_every = min(0.02, self._timings[1] / 5)
        last_full = 0.0
        try:
            while self._running:
                self.loop_at = time.monotonic()
                if faults.fault("raft.thread"):
                    raise faults.InjectedFault("fault point raft.thread")
                touched: set[int] = set()
                timeout = max(0.0, last_full + tick_every - time.monotonic())
                try:
                    item = self._inbox.get(timeout=timeout)
                    if not self._handle_contained(item, touched):
                        break
                    for _ in range(10_000):
                        try:
                            item = self._inbox.get_nowait()
                        except queue.Empty:
                            break
                        if not self._handle_contained(item, touched):
                            self._running = False
                            break
                except queue.Empty:
                    pass
                if self._proposed:
                    self._flush_proposals()
                now = time.monotonic()
                if now - last_full >= tick_every:
                    last_full = now
                    todo: Any = sorted(touched | {g for g in self._groups if self._quiet_tick_due(g, now)})
                else:
                    todo = sorted(touched)
                for g in todo:
                    if g in self._groups and self.fatal is None:
                        self._tick(g)
        except BaseException as e:  # whatever ends this thread ends replication
            self._fail("raft_thread", f"the Raft thread died: {e!r}", exc_info=True)
        else:
            if not self._stopping:
                self._fail("raft_thread", "the Raft thread exited")
        finally:
            if self.fatal is not None:
                self._refuse_queued()

    def _handle_contained(self, item: tuple[Any, ...], touched: set[int]) -> bool:
        """``_handle`` with its exceptions contained; False: stop the loop."""
        try:
            return self._handle(item, touched)
        except Exception as e:
            if item[0] == "layout":
                # This node would silently not hold (or still hold) a partition the meta group says otherwise of.
                self._fail("apply", f"acting on the layout of partition {item[1]} failed: {e!r}", exc_info=True)
                return False
            group = item[2] if item[0] == "frame" else item[1] if item[0] in ("propose", "transfer") else None
            self._contain(e, f"handling a {item[0]} item", group)
            return self.fatal is None

    def _contain(self, e: Exception, what: str, group: Any = None) -> None:
        """An exception on the Raft thread: fatal if it failed a journal or an
        apply, else logged and counted (the node keeps replicating)."""
        failed = [g for g, j in list(self._journals.items()) if j.failed]
        if failed or isinstance(e, JournalError):
            g = failed[0] if failed else group
            name = self._name(g) if isinstance(g, int) else "?"
            self._fail("journal", f"the journal of group {name} failed ({what}): {e!r}", exc_info=True)
        elif isinstance(e, ApplyFailed):
            self._fail("apply", f"{e}: {e.__cause__!r}", exc_info=True)
        else:
            self.contained_errors += 1
            log.exception("raft: %s failed; contained, replication goes on", what)

    def _fail(self, kind: str, reason: str, exc_info: bool = False) -> None:
        """Replication cannot go on here: stop the Raft loop, let go of every
        leadership at once (no stale ``is_leader``), and record why; the node's
        watchdog turns it not-ready and exits. Only the first reason counts."""
        if self.fatal is not None:
            return
        self.fatal = reason
        self.fatal_kind = kind
        self._running = False
        log.critical("replication cannot go on: %s; this node stops and must be restarted", reason,
                     exc_info=exc_info)
        for g in range(self.partitions + 1):
            self._track_leader(g, None, False)

    def _refuse_queued(self) -> None:
        """After a fatal error: answer every waiting proposer now (they would
        otherwise wait out the proposal timeout and hold up the node's exit).
        Those that never reached Raft were not written; those in the log have
        an unknown outcome."""
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                break
            if item[0] == "propose":
                try:
                    item[3](None, FAIL_REASON.REQUEST_DENIED)
                except Exception:
                    log.debug("refusing a queued proposal failed", exc_info=True)
        for grp in list(self._groups.values()):
            grp.abandon_waiting()

    def raft_thread_alive(self) -> bool:
        """The Raft thread runs and nothing fatal happened (the metric and the watchdog)."""
        t = self._thread
        return t is not None and t.is_alive() and self.fatal is None

    def failure(self) -> str | None:
        """Why this replicator cannot make progress, or None (read by the node's watchdog)."""
        if self.fatal is not None:
            return self.fatal
        t = self._thread
        if t is not None and not t.is_alive() and not self._stopping:
            return "the Raft thread is not running"
        return None

    def failure_kind(self) -> str | None:
        """The label of tasks_fatal_errors_total: what failed, or None while nothing did.
        A Raft thread that stopped without a recorded reason counts as "raft_thread"."""
        if self.failure() is None:
            return None
        return self.fatal_kind or "raft_thread"

    def _tick(self, g: int) -> None:
        grp = self._groups[g]
        journal = self._journals[g]
        try:
            now = self._ticked_at[g] = time.monotonic()
            journal.flush()
            commit, last = grp.raftCommitIndex, grp.last_log_index()
            grp._onTick(0)
            if journal.failed:  # failed under a pysyncobj path that swallows errors (loading a dump)
                self._fail("journal", f"the journal of group {self._name(g)} failed: {journal!r}")
                return
            self._note_stall(g, grp)
            if journal.log_bytes > self._compact_bytes and time.monotonic() - self._forced_at.get(g, 0.0) > 10.0:
                self._forced_at[g] = time.monotonic()
                grp.forceLogCompaction()
            leading = grp.state() == LEADER
            if g in self.stalled:
                self._while_stalled(g, grp, leading)
            if leading and (grp.last_log_index() > last or grp.raftCommitIndex > commit):
                self._activity(g)  # new entries (a follower's forwarded proposal among them)
                grp.send_append_entries()
            self._idle_or_not(g, grp, leading, now)
            members = grp.member_ids()
            if members != self._members[g]:
                self._members[g] = frozenset(members)
        except Exception as e:
            self._contain(e, f"the tick of group {self._name(g)}", g)
            if self.fatal is None:
                time.sleep(0.01)
        finally:
            # Every tick, whatever happened in it: is_leader() and leader() never freeze.
            if self.fatal is None and self._groups.get(g) is grp:
                self._track_leader(g, grp, grp.state() == LEADER)

    def _idle_or_not(self, g: int, grp: RaftGroup, leading: bool, now: float) -> None:
        if not leading:
            if grp.idle_heartbeat:
                grp.wake()  # deposed while idle: the next leadership starts busy
            return
        grp.quiet = 0.0
        if grp.idle_heartbeat or self.idle_after <= 0:
            return
        active = self._active_at.setdefault(g, now)
        if now - active >= self.idle_after and grp.raftLastApplied >= grp.raftCommitIndex \
                and grp.last_log_index() == grp.raftCommitIndex and g not in self.stalled:
            grp.go_idle(self.idle_heartbeat)

    def _note_stall(self, g: int, grp: RaftGroup) -> None:
        """Follow the group's apply stall (set by RaftGroup's apply loop)."""
        if grp.stall is not None and g not in self.stalled:
            log.error("%s; this replica stops applying group %d until it has room (it keeps replicating)",
                      grp.stall, g)
            self.stalled.add(g)
            self._stalled_since[g] = time.monotonic()
        elif grp.stall is None and g in self.stalled:
            log.warning("group %d applies again", g)
            self.stalled.discard(g)

    def _while_stalled(self, g: int, grp: RaftGroup, leading: bool) -> None:
        """A replica that cannot apply should not lead: as leader it hands over
        to a caught-up voter (pysyncobj sends TimeoutNow only to one whose log
        matches its own; until then it keeps leading, which is safe: it still
        replicates and commits, it only does not apply). As follower it does not
        stand for election while it hears a leader, nor for a grace period after;
        then it may, so that a group whose only up-to-date log is here gets a
        leader, which hands over once another voter caught up."""
        now = time.monotonic()
        election = self._timings[0]
        if leading:
            last = self._handover_at.get(g, 0.0)
            if now - last >= election:
                if last < self._stalled_since.get(g, now):
                    log.warning("group %d: this replica leads but cannot apply; handing leadership over", g)
                self._handover_at[g] = now
                grp.begin_transfer(None)  # once a voter holds the whole log (commands wait meanwhile)
            return
        leader = grp.leader_id()
        heard = self._heard[g].get(leader, 0.0) if leader is not None and leader != self.node_id else 0.0
        since = max(heard, self._stalled_since.get(g, now))
        grp.hold_elections_until(since + STALL_GRACE_ELECTIONS * election)

    def _track_leader(self, g: int, grp: RaftGroup | None, leading: bool) -> None:
        leader = grp.leader_id() if grp is not None else None
        if leader != self._leaders[g]:
            self._leaders[g] = leader
            if leader is not None:  # count elections won, not the leaderless gaps
                self.leader_changes += 1
                kind = "meta" if g == self.meta_group else "partition"
                self.leader_changes_by_kind[kind] += 1
        if leading != self._leading[g]:
            self._leading[g] = leading
            loop = self._loop
            if loop is not None:
                for listener in self._leadership_listeners:
                    loop.call_soon_threadsafe(listener, g, leading)


def _unused_hook(*_: Any) -> Any:
    raise AssertionError("pysyncobj's Serializer is replaced by LmdbSnapshotter")


def _settle(fut: asyncio.Future[Any], res: Any, exc: BaseException | None) -> None:
    if fut.done():
        return
    if exc is not None:
        fut.set_exception(exc)
    else:
        fut.set_result(res)


class _ReadTicket:
    """One read-point request to the Raft thread and the reads that share it."""

    __slots__ = ("fut", "taken")

    def __init__(self, fut: asyncio.Future[int]) -> None:
        self.fut = fut
        self.taken = False  # set on the Raft thread when it takes the request


def _fan_out(callbacks: list[Any]) -> Callable[[Any, int], None]:
    """One batch entry's answer, split into the answer of each of its commands."""

    def done(res: Any, err: int) -> None:
        batch = res.get("_batch") if isinstance(res, dict) else None
        for i, cb in enumerate(callbacks):
            each = batch[i] if batch is not None and i < len(batch) else (None if batch is not None else res)
            try:
                cb(each, err)
            except Exception:
                log.exception("a proposal's callback failed")

    return done


def _settle_read(fut: asyncio.Future[int], index: int | None, why: str | None) -> None:
    if fut.done():
        return
    if index is not None:
        fut.set_result(index)
    else:
        fut.set_exception(ReadIndexUnavailable(why or "no read index"))


def _resolve(fut: asyncio.Future[Result], res: Any, err: int) -> None:
    if fut.done():
        return
    if err == FAIL_REASON.SUCCESS:
        fut.set_result(res if res is not None else {"ok": True})
    elif err == FAIL_REASON.UNKNOWN_OUTCOME:
        fut.set_result({"ok": False, "code": "unavailable",
                        "message": "the write's outcome is unknown; retry with the same requestId"})
    else:
        fut.set_result({
            "ok": False,
            "code": "unavailable",
            "message": f"write not committed ({FAIL_NAMES.get(err, err)}); retry with the same requestId",
        })


def _implements_the_boundary(rep: RaftReplicator) -> NodeReplicator:
    """Never called: mypy checks here that RaftReplicator implements ``NodeReplicator`` whole."""
    return rep
