"""LocalReplicator: a single node, no consensus, the embedded default.

Proposals are applied by one apply thread through the very same path a Raft
follower uses (``StateMachine.apply_batch`` with log indexes), so dedup,
idempotence by index and group commit behave alike in both modes. The event
loop never blocks on LMDB: futures are resolved with ``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from hanzo_tasks.replication.base import (
    ChannelHandler,
    LeadershipListener,
    Listener,
    NodeReplicator,
    NotLeader,
    PeerListener,
    Result,
)
from hanzo_tasks.replication.rpc import PeerRpc
from hanzo_tasks.shard import STORAGE_FULL, PartitionStore, StateMachine

log = logging.getLogger("tasks.replication")

#: A proposal waiting for the apply thread: (group, command, the proposer's future).
_Proposal = tuple[int, bytes, "asyncio.Future[Result]"]
MAX_BATCH = 256


class SingleNodeDirectory:
    """The cluster directory of a single node: it keeps none (no meta group).

    Nothing is recorded: no members, no layout, no pins; migration jobs of a
    single node live in memory (``migration.Migrations``)."""

    def partitions(self) -> int | None:
        return None

    def members(self) -> dict[str, dict[str, Any]]:
        return {}

    def voters(self) -> list[str] | None:
        return None

    def replica_sets(self) -> dict[int, list[str]]:
        return {}

    def pins(self) -> dict[tuple[str, str], dict[str, Any]]:
        return {}

    def jobs(self) -> list[dict[str, Any]]:
        return []

    def job(self, job_id: str) -> dict[str, Any] | None:
        return None


class LocalReplicator:
    """Applies proposals at once, in order, with group commit.

    It implements ``NodeReplicator`` whole: a single node leads and holds
    every partition and has no peers, so the cluster-control half answers
    trivially (no peers to call or hand leadership to, one voter, itself)."""

    clustered = False

    def __init__(
        self,
        data_dir: str | Path,
        *,
        node_id: str = "local",
        partitions: int = 1,
        map_size: int = 64 << 20,
        map_size_max: int = 32 << 30,
        sync: bool = True,
        reserve_disk: int = 0,
    ) -> None:
        self.node_id = node_id
        self.partitions = partitions
        self._stores = [
            PartitionStore(
                Path(data_dir) / "partitions" / str(p),
                map_size=map_size,
                map_size_max=map_size_max,
                sync=sync,
                reserve_disk=reserve_disk,
            )
            for p in range(partitions)
        ]
        self._machines = [StateMachine(s) for s in self._stores]
        self._next = [s.applied_index() + 1 for s in self._stores]
        self._queue: queue.SimpleQueue[_Proposal | None] = queue.SimpleQueue()  # None: stop
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self.failed = False
        self.proposals = 0
        self.forwarded = 0  # every partition is here: nothing to forward
        self.stalled: AbstractSet[int] = frozenset()  # a full disk refuses proposals before they apply
        self.meta_group = partitions  # no such group here: a single node keeps no cluster directory
        self.meta = SingleNodeDirectory()
        self.rpc = PeerRpc(lambda peer, body: False)  # no peers: every call raises PeerUnavailable
        self.peer_addrs: Mapping[str, str] = {}
        self.leader_changes_by_kind: Mapping[str, int] = {"meta": 0, "partition": 0}
        self.outcomes: Mapping[tuple[str, str], int] = {}

    # ---- lifecycle -------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._running = True
        self._thread = threading.Thread(target=self._run, name="tasks-apply", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        for s in self._stores:
            s.close()

    # ---- the boundary ----------------------------------------------------

    async def propose(self, group: int, command: bytes) -> Result:
        if not self._running:
            raise NotLeader("replicator stopped")
        store = self._stores[group]
        if store.disk_full():
            return STORAGE_FULL
        fut: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.put((group, command, fut))
        self.proposals += 1
        return await fut

    async def read_index(self, group: int) -> int:
        """Every acknowledged write is applied already (a proposal is answered
        after its apply, and this node is the only one): read now."""
        if not self._running:
            raise NotLeader("replicator stopped")
        return self._stores[group].applied_index()

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def on_leadership(self, listener: LeadershipListener) -> None:
        """A single node leads every partition from start to stop: leadership
        never changes, so ``listener`` is never called."""

    def is_leader(self, group: int) -> bool:
        return self._running

    def leader(self, group: int) -> str | None:
        return self.node_id

    def is_local(self, group: int) -> bool:
        return 0 <= group < self.partitions

    def local_partitions(self) -> list[int]:
        return list(range(self.partitions))

    def replicas(self, group: int) -> tuple[str, ...]:
        return (self.node_id,)

    def store(self, group: int) -> PartitionStore:
        return self._stores[group]

    def machine(self, group: int) -> StateMachine:
        return self._machines[group]

    # ---- health --------------------------------------------------------------

    def failure(self) -> str | None:
        return "the apply thread failed" if self.failed else None

    def failure_kind(self) -> str | None:
        return "apply" if self.failed else None

    # ---- cluster control: a single node has no peers ---------------------------

    def set_peer_addresses(self, peers: Mapping[str, str]) -> None:
        """Nothing to dial: a single node talks to no peer."""

    def on_peer_change(self, listener: PeerListener) -> None:
        """No peer link ever comes or goes: ``listener`` is never called."""

    def on_channel(self, channel: int, handler: ChannelHandler) -> None:
        """No peer port: no frame ever arrives, ``handler`` is never called."""

    def send_peer(self, peer: str, channel: int, body: bytes) -> bool:
        return False

    def peer_connected(self, peer: str) -> bool:
        return False

    def peer_responsive(self, peer: str) -> bool:
        return False

    def peer_rejected(self) -> dict[str, int]:
        return {}

    def peers_for(self, group: int, exclude: Sequence[str] = ()) -> list[str]:
        return []

    def leader_hint(self, group: int) -> str | None:
        return None  # no partition is held elsewhere

    def note_leader(self, group: int, leader: str) -> None:
        """No partition is held elsewhere: nothing to remember."""

    def voters(self, group: int) -> frozenset[str]:
        return frozenset({self.node_id})

    def group_status(self, group: int) -> dict[str, Any]:
        applied = self._stores[group].applied_index()
        return {"leader": self.node_id, "appliedIndex": applied, "commitIndex": applied, "term": 1,
                "hasQuorum": True}

    async def group_membership(self, group: int) -> dict[str, Any] | None:
        if not self.is_local(group):
            return None
        return {"voters": [self.node_id], "pending": False, "settled": True, "answering": [],
                "applied": self._stores[group].applied_index()}

    async def group_progress(self, group: int) -> dict[str, int] | None:
        if not self.is_local(group):
            return None
        applied = self._stores[group].applied_index()
        return {"applied": applied, "commit": applied}

    async def change_membership(
        self, op: str, node_id: str, *, timeout: float = 30.0, groups: Sequence[int] | None = None
    ) -> None:
        raise ValueError("a single node has no other voters: membership changes need replicator: raft")

    async def change_group_membership(
        self, group: int, op: str, node_id: str, *, timeout: float = 20.0
    ) -> None:
        raise ValueError("a single node has no other voters: membership changes need replicator: raft")

    async def prepare_replica(
        self, group: int, node_id: str, nodes: Sequence[str], timeout: float = 5.0
    ) -> None:
        raise ValueError("a single node holds every partition: replica sets need replicator: raft")

    def set_replica_sets(self, layout: Mapping[int, Sequence[str]]) -> None:
        """Every partition is here, always."""

    def transfer_leadership(self, group: int, to: str | None = None) -> None:
        """Nobody to hand leadership to: this node keeps it."""

    @property
    def loop_at(self) -> float:
        """No Raft loop that could be stuck: always now."""
        return time.monotonic()

    def raft_thread_alive(self) -> bool:
        """No Raft thread: the apply thread stands in for it."""
        return self._running and not self.failed

    def snapshot_counts(self) -> dict[str, int]:
        return {"taken": 0, "installed": 0}

    # ---- the apply thread --------------------------------------------------

    def _run(self) -> None:
        try:
            self._loop_forever()
        except BaseException:  # never die silently: fail what is queued, refuse the rest
            log.exception("the apply thread failed; this node refuses writes until restarted")
            self._running = False
            self.failed = True
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not None and self._loop is not None:
                    self._loop.call_soon_threadsafe(
                        self._deliver, item[0], 0, item[2],
                        {"ok": False, "code": "unavailable", "message": "apply thread failed"},
                    )

    def _loop_forever(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                batch.append(nxt)
            by_group: dict[int, list[_Proposal]] = {}
            for entry in batch:
                by_group.setdefault(entry[0], []).append(entry)
            for group, items in by_group.items():
                self._apply_group(group, items)

    def _apply_group(self, group: int, items: list[_Proposal]) -> None:
        first = self._next[group]
        entries = [(first + i, cmd) for i, (_, cmd, _) in enumerate(items)]
        try:
            results = self._machines[group].apply_batch(entries)
        except Exception as e:  # an I/O error: fail these proposals, keep serving
            log.exception("apply batch failed")
            results = [{"ok": False, "code": "unavailable", "message": f"apply failed: {e}"}] * len(items)
        # STORAGE_FULL results are a suffix of entries that were not applied.
        self._next[group] = first + sum(1 for r in results if r is not STORAGE_FULL)
        loop = self._loop
        assert loop is not None
        for (index, _), (_, _, fut), res in zip(entries, items, results, strict=True):
            loop.call_soon_threadsafe(self._deliver, group, index, fut, res)

    def _deliver(self, group: int, index: int, fut: asyncio.Future[Result], res: Result | None) -> None:
        if res is None:
            res = {"ok": False, "code": "internal", "message": "entry already applied"}
        if not fut.done():
            fut.set_result(res)
        if res.get("code") != "storage_full":
            for listener in self._listeners:
                try:
                    listener(group, index, res)
                except Exception:
                    log.exception("apply listener failed")


def _implements_the_boundary(rep: LocalReplicator) -> NodeReplicator:
    """Never called: mypy checks here that LocalReplicator implements ``NodeReplicator`` whole."""
    return rep
