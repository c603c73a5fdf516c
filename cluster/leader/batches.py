"""The batch runner: the leader of a shard's partition works through its
RUNNING batch operations (SPEC §5.9).

Nothing here is the source of truth. The targets and the cursor live in the
shard (``shard.batches``); this loop reads them, acts on each target at the
batch's ``rps`` with one proposal (terminate, cancel, or a signal whose
requestId is derived from the batch and the run, so a repeat is deduplicated),
and records progress at least every 100 items or every second. A new leader
finds the RUNNING records and resumes from the stored cursor; the items
between that cursor and the old leader's last act are done again, which is
harmless: each is idempotent, and a run that closed meanwhile counts as
complete.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.replication import NotLeader, NotReplica
from hanzo_tasks.shard import batches as B
from hanzo_tasks.shard import reads
from hanzo_tasks.shard.keys import ShardKeys

log = logging.getLogger("tasks.batches")

SCAN_EVERY = 5.0  # a safety net: starts and leadership changes wake the scan at once
RECORD_EVERY_ITEMS = 100
RECORD_EVERY_S = 1.0

Key = tuple[str, str, str]  # org, ns, batchId

_OP = {"BATCH_OPERATION_TYPE_TERMINATE": "wf.terminate", "BATCH_OPERATION_TYPE_CANCEL": "wf.cancel",
       "BATCH_OPERATION_TYPE_SIGNAL": "wf.signal"}


class BatchRunner:
    def __init__(self, service: Any) -> None:
        self.service = service
        self._workers: dict[Key, asyncio.Task[None]] = {}
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.items = 0

    async def start(self) -> None:
        rep = self.service.replicator
        rep.subscribe(self._on_apply)
        rep.on_leadership(self._on_leadership)
        self._task = asyncio.create_task(self._scan_loop(), name="batch-runner")

    def _on_leadership(self, group: int, leading: bool) -> None:
        if leading:  # a new leader resumes the partition's batches now
            self._wake.set()

    def _on_apply(self, group: int, index: int, result: dict[str, Any]) -> None:
        """A batch started (or leadership moved a shard here): scan now, not at the next tick."""
        if any(ev.get("kind") in ("batch.started", "shard.activated") for ev in result.get("_events", ())):
            self._wake.set()

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._workers.values()) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._workers.clear()

    def _running(self) -> list[Key]:
        """RUNNING batches of the partitions this node leads."""
        rep = self.service.replicator
        out: list[Key] = []
        for p in range(rep.partitions):
            if not rep.is_leader(p):
                continue
            with rep.store(p).read() as txn:
                for org, ns in reads.shards(txn):
                    if self.service.partition(org, ns) != p:
                        continue  # a copy left by a migration: the shard lives elsewhere
                    out.extend((org, ns, b["batchId"]) for b in reads.all_batches(txn, org, ns)
                               if b["state"] == B.RUNNING)
        return out

    def _forget_worker(self, key: Key, _task: asyncio.Task[None]) -> None:
        """A batch's worker ended: the next scan starts a new one if the batch still runs."""
        self._workers.pop(key, None)

    async def _scan_loop(self) -> None:
        while True:
            try:
                for key in self._running():
                    if key not in self._workers:
                        task = asyncio.create_task(self._work(key), name=f"batch-{key[2]}")
                        self._workers[key] = task
                        task.add_done_callback(functools.partial(self._forget_worker, key))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("batch scan failed")
            try:
                await asyncio.wait_for(self._wake.wait(), SCAN_EVERY)
            except TimeoutError:
                pass
            self._wake.clear()

    async def _work(self, key: Key) -> None:
        org, ns, bid = key
        try:
            await self._run(org, ns, bid)
        except asyncio.CancelledError:
            raise
        except (NotLeader, NotReplica):
            pass  # the new leader resumes from the stored cursor
        except ApiError as e:
            if e.code not in ("unavailable", "not_found"):
                log.warning("batch %s of %s: %s", bid, ns, e.message)
        except Exception:
            log.exception("batch %s of %s failed; the next scan resumes it", bid, ns)
        # Whatever stopped this worker, a scan in a second picks the batch up again if it
        # is still RUNNING here (a step that met an unavailable partition, say).
        asyncio.get_running_loop().call_later(1.0, self._wake.set)

    def _state(self, org: str, ns: str, bid: str) -> tuple[dict[str, Any] | None, list[tuple[str, str]]]:
        with self.service.read_txn(org, ns) as txn:
            rec = reads.batch(txn, org, ns, bid)
            if rec is None or rec["state"] != B.RUNNING:
                return rec, []
            return rec, B.next_targets(txn, ShardKeys(org, ns), bid, rec["cursor"], RECORD_EVERY_ITEMS)

    async def _run(self, org: str, ns: str, bid: str) -> None:
        svc = self.service
        part = svc.partition(org, ns)
        while svc.replicator.is_leader(part):
            rec, targets = self._state(org, ns, bid)
            if rec is None or rec["state"] != B.RUNNING:
                return
            complete, failure = rec["completeOperationCount"], rec["failureOperationCount"]
            if not targets:  # every target done: the record closes at this cursor
                await self._record(org, ns, bid, rec["cursor"] + "\x00", complete, failure)
                return
            gap = 1.0 / float(rec["rps"])
            next_at = time.monotonic()
            recorded_at = time.monotonic()
            cursor = rec["cursor"]
            for wid, rid in targets:
                delay = next_at - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                next_at = max(next_at + gap, time.monotonic() - 1.0)
                if await self._act(org, ns, bid, rec, wid, rid):
                    complete += 1
                else:
                    failure += 1
                cursor = B.cursor_of(wid, rid)
                if time.monotonic() - recorded_at >= RECORD_EVERY_S:
                    if not await self._record(org, ns, bid, cursor, complete, failure):
                        return
                    recorded_at = time.monotonic()
            if not await self._record(org, ns, bid, cursor, complete, failure):
                return

    async def _act(self, org: str, ns: str, bid: str, rec: dict[str, Any], wid: str, rid: str) -> bool:
        """One item: True when it is complete (done, or the run closed meanwhile),
        False for a permanent error. Leadership loss and unknown outcomes raise,
        so that the item is done again from the stored cursor."""
        op = _OP[rec["operation"]]
        fields: dict[str, Any] = {"workflowId": wid, "runId": rid, "identity": rec.get("identity") or "batch"}
        if op == "wf.signal":
            sig = rec.get("signal") or {}
            fields.update(name=sig.get("name"), input=sig.get("input"), requestId=f"batch-{bid}")
        else:
            fields["reason"] = rec.get("reason") or ""
            if op == "wf.cancel":
                fields["cancelAckMs"] = self.service.cfg.timeouts.cancel_ack
        try:
            await self.service.propose(org, ns, op, **fields)
        except ApiError as e:
            if e.code in ("failed_precondition", "not_found"):
                return True  # the run closed (or went) meanwhile: nothing left to do
            if e.code in ("unavailable", "storage_full", "rate_limited"):
                raise
            log.info("batch %s: %s %s/%s failed: %s", bid, op, wid, rid, e.message)
            return False
        self.items += 1
        return True

    async def _record(self, org: str, ns: str, bid: str, cursor: str, complete: int, failure: int) -> bool:
        """Store progress; False when the batch is no longer RUNNING (terminated)."""
        res = await self.service.propose(org, ns, "batch.progress", batchId=bid, cursor=cursor,
                                         complete=complete, failure=failure)
        return res["batch"]["state"] == B.RUNNING
