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
from pathlib import Path

from hanzo_tasks.replication.base import Listener, NotLeader, Result
from hanzo_tasks.shard import STORAGE_FULL, PartitionStore, StateMachine

log = logging.getLogger("tasks.replication")

_STOP = object()
MAX_BATCH = 256


class LocalReplicator:
    """Applies proposals at once, in order, with group commit."""

    kind = "local"

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
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._running = False
        self.failed = False
        self.proposals = 0

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
        self._queue.put(_STOP)
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
        fut = asyncio.get_running_loop().create_future()
        self._queue.put((group, command, fut))
        self.proposals += 1
        return await fut

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

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
                if item is not _STOP:
                    self._loop.call_soon_threadsafe(  # type: ignore[union-attr]
                        self._deliver, item[0], 0, item[2],
                        {"ok": False, "code": "unavailable", "message": "apply thread failed"},
                    )

    def _loop_forever(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    self._queue.put(_STOP)
                    break
                batch.append(nxt)
            by_group: dict[int, list] = {}
            for entry in batch:
                by_group.setdefault(entry[0], []).append(entry)
            for group, items in by_group.items():
                self._apply_group(group, items)

    def _apply_group(self, group: int, items: list) -> None:
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

    def _deliver(self, group: int, index: int, fut: asyncio.Future, res: Result | None) -> None:
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
