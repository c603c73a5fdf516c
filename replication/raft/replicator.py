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
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pysyncobj import SyncObjConf
from pysyncobj.config import FAIL_REASON
from pysyncobj.node import Node

from replication.base import Listener, NotLeader, Result
from replication.raft import codec
from replication.raft.group import (
    REGULAR,
    GroupTransport,
    RaftGroup,
    StorageStalled,
    membership_command,
)
from replication.raft.journal import DurableJournal
from replication.raft.snapshots import LmdbSnapshotter
from replication.raft.transport import RAFT, PeerMux
from shard import STORAGE_FULL, PartitionStore, StateMachine
from shard.meta import MetaMachine

log = logging.getLogger("tasks.raft")

LEADER = 2
FAIL_NAMES = {v: k.lower() for k, v in vars(FAIL_REASON).items() if not k.startswith("_")}


class RaftReplicator:
    kind = "raft"

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
    ) -> None:
        self.node_id = node_id
        self.partitions = partitions
        self.meta_group = partitions  # the meta group's tag follows the partitions
        self.data_dir = Path(data_dir)
        self.peer_addrs = {pid: addr for pid, addr in peers.items() if pid != node_id}
        self._listen = listen
        self._secret = secret
        self._sync = sync
        self._max_frame = max_frame
        self._snapshot_every = snapshot_every
        # Compaction is also due when a group's log (kept in memory by pysyncobj
        # as well as on disk) outgrows this, e.g. after a migration's chunks.
        self._compact_bytes = compact_bytes
        self._forced_at: dict[int, float] = {}
        self._snapshotters: list[LmdbSnapshotter] = []
        self.propose_timeout = propose_timeout_ms / 1000.0
        self._timings = (election_timeout_ms / 1000.0, heartbeat_interval_ms / 1000.0)
        self._stores: list[PartitionStore] = []
        self._machines: list[Any] = []
        self._journals: list[DurableJournal] = []
        self._groups: list[RaftGroup] = []
        for g in range(partitions + 1):
            name = "meta" if g == partitions else str(g)
            store = PartitionStore(
                self.data_dir / "partitions" / name,
                map_size=map_size,
                map_size_max=map_size_max,
                sync=False,
                reserve_disk=reserve_disk,
            )
            self._stores.append(store)
            self._machines.append(MetaMachine(store) if g == partitions else StateMachine(store))
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._listeners: list[Listener] = []
        self._leadership_listeners: list[Any] = []
        self._peer_listeners: list[Any] = []
        self._channel_handlers: dict[int, Any] = {}
        self.stalled: set[int] = set()  # groups whose next committed entry does not fit here
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._running = False
        self._leading: list[bool] = [False] * (partitions + 1)
        self._leaders: list[str | None] = [None] * (partitions + 1)
        self._heard: list[dict[str, float]] = [{} for _ in range(partitions + 1)]
        # Voters of each group besides this node, as last seen by the Raft thread
        # (a copy the event loop may read without racing pysyncobj's own sets).
        self._members: list[frozenset[str]] = [frozenset(self.peer_addrs)] * (partitions + 1)
        self.mux: PeerMux | None = None
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
            appendEntriesBatchSizeBytes=self._max_frame * 2,  # never chunk (see codec)
            connectionTimeout=max(3.5, election * 2),
            leaderFallbackTimeout=max(election * 2, heartbeat * 4),
            logCompactionMinEntries=max(2, self._snapshot_every),
            logCompactionMinTime=1e9,  # compaction is driven by entries, not time
            logCompactionBatchSize=1 << 20,  # snapshot install chunk size
            fullDumpFile=str(self._snapshotters[g].path),
            serializer=self._snapshotters[g].serialize,
            deserializer=self._snapshotters[g].deserialize,
            serializeChecker=self._snapshotters[g].check,
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
        )
        await self.mux.start()
        peer_ids = sorted(self.peer_addrs)
        for g in range(self.partitions + 1):
            name = "meta" if g == self.partitions else str(g)
            jdir = self.data_dir / "raft"
            jdir.mkdir(parents=True, exist_ok=True)
            journal = DurableJournal(str(jdir / f"{name}.journal"), sync=self._sync)
            self._journals.append(journal)
            self._snapshotters.append(LmdbSnapshotter(self._stores[g], jdir / f"{name}.snapshot"))
        for g in range(self.partitions + 1):
            self._groups.append(
                RaftGroup(g, self.node_id, peer_ids, self._conf(g), self._machines[g],
                          self._transport_factory(g), self._on_applied)
            )
        self._running = True
        self._thread = threading.Thread(target=self._run, name="tasks-raft", daemon=True)
        self._thread.start()

    def _transport_factory(self, g: int) -> Any:
        mux = self.mux
        journal = self._journals[g]
        assert mux is not None

        def send(peer: str, body: bytes) -> bool:
            return mux.send(peer, RAFT, g, body)

        def factory(syncObj: Any, selfNode: Any, otherNodes: Any) -> GroupTransport:
            return GroupTransport(syncObj, selfNode, otherNodes, send=send, flush=journal.flush)

        return factory

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._inbox.put(("stop", None))
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        if self.mux is not None:
            await self.mux.stop()
        for j in self._journals:
            try:
                j._destroy()  # flush, persist the commit index, close
            except Exception:
                log.exception("journal close at stop failed")
        for s in self._stores:
            try:
                s.env.sync(True)
            except Exception:
                pass
            s.close()

    # ---- the boundary ------------------------------------------------------

    async def propose(self, group: int, command: bytes) -> Result:
        if not self._running:
            raise NotLeader("replicator stopped")
        if self._stores[group].disk_full() or group in self.stalled:
            return STORAGE_FULL  # refused before proposing: nothing was written anywhere
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

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

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_leadership(self, listener: Any) -> None:
        """listener(group, is_leader) on the event loop whenever this node gains or loses a group."""
        self._leadership_listeners.append(listener)

    def is_leader(self, group: int) -> bool:
        return self._leading[group]

    def leader(self, group: int) -> str | None:
        return self._leaders[group]

    def store(self, group: int) -> PartitionStore:
        return self._stores[group]

    def machine(self, group: int) -> Any:
        return self._machines[group]

    @property
    def meta(self) -> MetaMachine:
        return self._machines[self.meta_group]  # type: ignore[return-value]

    def voters(self, group: int) -> frozenset[str]:
        return self._members[group] | {self.node_id}

    def sees_quorum(self, group: int) -> bool:
        """SPEC §4.9: a leader heard from a majority, or a follower heard from its
        leader, within the last 2 x election timeout. Heartbeats are messages, so
        a paused or partitioned peer stops counting even with its TCP still open."""
        window = 2 * self._timings[0]
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
        g = self._groups[group]
        return {
            "leader": self._leaders[group],
            "appliedIndex": g.raftLastApplied,
            "commitIndex": g.raftCommitIndex,
            "term": g.raftCurrentTerm,
            "hasQuorum": self.sees_quorum(group),
        }

    def snapshot_counts(self) -> dict[str, int]:
        return {
            "taken": sum(s.taken for s in self._snapshotters),
            "installed": sum(s.installed for s in self._snapshotters),
        }

    async def change_membership(self, op: str, node_id: str, *, timeout: float = 30.0) -> None:
        """Add ("add") or remove ("rem") a voter in every group, one group at a time.

        pysyncobj applies one change per group at a time and refuses one while the
        leader's first entry of its term is uncommitted; refused or unknown
        outcomes are retried until the deadline. Already-done changes are no-ops.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for g in range(len(self._groups)):
            while True:
                members = self._members[g] | {self.node_id}
                if node_id != self.node_id and (op == "add") == (node_id in members):
                    break  # already so in this node's view of the group
                fut: asyncio.Future = loop.create_future()

                def done(res: Any, err: int, _fut: asyncio.Future = fut) -> None:
                    loop.call_soon_threadsafe(_resolve, _fut, res, err)

                self._inbox.put(("propose", g, membership_command(op, node_id), done))
                try:
                    res = await asyncio.wait_for(asyncio.shield(fut), 5.0)
                except TimeoutError:
                    res = {"ok": False}
                if res.get("ok"):
                    break  # committed (this node's own view never drops itself)
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

    def on_peer_change(self, listener: Any) -> None:
        """listener(peer_id, up) on the event loop when the link to a peer comes or goes."""
        self._peer_listeners.append(listener)

    def _peer_change(self, peer: str, up: bool) -> None:
        self._inbox.put(("up" if up else "down", peer))
        for listener in self._peer_listeners:
            try:
                listener(peer, up)
            except Exception:
                log.exception("peer listener failed")

    def on_channel(self, channel: int, handler: Any) -> None:
        """``handler(peer_id, body)`` on the event loop for every frame of ``channel``.

        The peer port carries more than Raft (SPEC §8.7): node-level protocols
        such as dispatch relaying register here; frames are authenticated by the
        mux before they arrive.
        """
        if channel == RAFT:
            raise ValueError("the Raft channel belongs to the replicator")
        self._channel_handlers[channel] = handler

    def send_peer(self, peer: str, channel: int, body: bytes) -> bool:
        """Queue one frame of a node-level channel for ``peer`` (False: not queued)."""
        mux = self.mux
        return mux is not None and peer != self.node_id and mux.send(peer, channel, 0, body)

    def peer_connected(self, peer: str) -> bool:
        mux = self.mux
        return mux is not None and mux.is_connected(peer)

    def _on_frame(self, peer: str, channel: int, group: int, body: bytes) -> None:
        if channel == RAFT:
            self._inbox.put(("frame", peer, group, body))
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

    def _handle(self, item: tuple, touched: set[int]) -> bool:
        kind = item[0]
        if kind == "frame":
            _, peer, group, body = item
            if not 0 <= group < len(self._groups):
                self.bad_messages += 1
                return True
            grp = self._groups[group]
            if peer not in grp.member_ids():
                return True  # not (yet, or any more) a voter of this group
            node = grp.nodes.get(peer) or Node(peer)
            try:
                msg = codec.decode(body)
            except codec.BadMessage as e:
                self.bad_messages += 1
                log.warning("dropped a raft message from %s: %s", peer, e)
                return True
            self._heard[group][peer] = time.monotonic()
            if msg["type"] == "append_entries":
                msg = grp.normalize_append(msg)
            grp.transport.deliver(node, msg)
            touched.add(group)
        elif kind == "propose":
            _, group, data, cb = item
            self._groups[group]._applyCommand(data, cb)
            touched.add(group)
        elif kind == "up" or kind == "down":
            for grp in self._groups:
                node = grp.nodes.get(item[1]) or Node(item[1])
                (grp.transport.node_up if kind == "up" else grp.transport.node_down)(node)
        elif kind == "transfer":
            _, group, to = item
            grp = self._groups[group]
            target = grp.nodes.get(to) if to else None
            grp.transferLeadership(target)
            touched.add(group)
        elif kind == "call":
            item[1]()
        elif kind == "stop":
            return False
        return True

    def _run(self) -> None:
        # Messages and proposals wake the thread at once and tick only the groups
        # they touch; every group is ticked at least every `tick_every` for its
        # heartbeats and election timers (a fraction of the heartbeat interval).
        tick_every = min(0.02, self._timings[1] / 5)
        last_full = 0.0
        while self._running:
            touched: set[int] = set()
            timeout = max(0.0, last_full + tick_every - time.monotonic())
            try:
                item = self._inbox.get(timeout=timeout)
                if not self._handle(item, touched):
                    break
                for _ in range(10_000):
                    try:
                        item = self._inbox.get_nowait()
                    except queue.Empty:
                        break
                    if not self._handle(item, touched):
                        self._running = False
                        break
            except queue.Empty:
                pass
            now = time.monotonic()
            if now - last_full >= tick_every:
                last_full = now
                todo: Any = range(len(self._groups))
            else:
                todo = sorted(touched)
            for g in todo:
                self._tick(g)

    def _tick(self, g: int) -> None:
        grp = self._groups[g]
        try:
            self._journals[g].flush()
            commit, last = grp.raftCommitIndex, grp.last_log_index()
            try:
                grp._onTick(0)
            except StorageStalled as e:
                if g not in self.stalled:
                    log.error("%s; this replica stops applying group %d until it has room", e, g)
                    self.stalled.add(g)
                grp.hold_elections(3600.0)  # a leader that cannot apply stops heartbeating and is replaced
                return
            journal = self._journals[g]
            if journal.log_bytes > self._compact_bytes and time.monotonic() - self._forced_at.get(g, 0.0) > 10.0:
                self._forced_at[g] = time.monotonic()
                grp.forceLogCompaction()
            if g in self.stalled:
                log.warning("group %d applies again", g)
                self.stalled.discard(g)
                grp.hold_elections(2 * self._timings[0])
            leading = grp.state() == LEADER
            if leading and (grp.last_log_index() > last or grp.raftCommitIndex > commit):
                grp.send_append_entries()
            self._track_leader(g, grp, leading)
            members = grp.member_ids()
            if members != self._members[g]:
                self._members[g] = frozenset(members)
        except Exception:
            log.exception("raft tick of group %d failed", g)
            time.sleep(0.01)

    def _track_leader(self, g: int, grp: RaftGroup, leading: bool) -> None:
        leader = grp.leader_id()
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


def _resolve(fut: asyncio.Future, res: Any, err: int) -> None:
    if fut.done():
        return
    if err == FAIL_REASON.SUCCESS:
        fut.set_result(res if res is not None else {"ok": True})
    else:
        fut.set_result({
            "ok": False,
            "code": "unavailable",
            "message": f"write not committed ({FAIL_NAMES.get(err, err)}); retry with the same requestId",
        })
