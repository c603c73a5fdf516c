"""The deterministic state machine of a partition.

``StateMachine.apply_batch([(index, command_bytes), ...])`` is the only code
that writes shard state. It runs on every replica in log order, inside one
LMDB write transaction that also records the partition's applied index, so:

- an entry at or below the applied index is skipped (replaying a journal
  after a crash never applies twice);
- each command runs in a nested transaction: a command rejected by a business
  rule is rolled back and changes nothing, on every replica alike;
- nothing here reads a clock, draws randomness or looks at the environment:
  the proposer stamped ``now`` and ``rnd`` into the command.

Business errors are returned as results (``{"ok": False, "code": ...}``),
never raised to the caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import lmdb
from hanzo_tasks.shard import (
    activities,
    batches,
    identities,
    keys,
    moving,
    namespaces,
    records,
    schedules,
    workflow_tasks,
    workflows,
)
from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard.ctx import Ctx, Handler, Reject, Result
from hanzo_tasks.shard.store import PartitionStore, ResizeBusy, StorageFull
from hanzo_tasks.shard.txn import Txn

log = logging.getLogger("tasks.shard")

STORAGE_FULL: Result = C.err("storage_full", "storage full")
#: The map must grow while a snapshot image is being copied: nothing was
#: written, the same entries are applied again shortly (never returned to a client).
RESIZE_DEFERRED: Result = C.err("resize_deferred", "the map grows once the snapshot image is written")


def op_sys_barrier(ctx: Ctx) -> Result:
    """A no-op through the log: once applied here, every earlier write is too (linearizable reads)."""
    return C.ok()


#: The command families, each with its table of handlers by op.
FAMILIES: tuple[dict[str, Handler], ...] = (
    {"sys.barrier": op_sys_barrier},
    namespaces.HANDLERS,
    workflows.HANDLERS,
    workflow_tasks.HANDLERS,
    activities.HANDLERS,
    schedules.HANDLERS,
    moving.HANDLERS,
    identities.HANDLERS,
    batches.HANDLERS,
    records.HANDLERS,
)
#: Every command's handler, by op. ``mig.tail`` and ``sys.batch`` are applied by the machine itself
#: (they apply other commands); every other op has exactly one handler.
HANDLERS: dict[str, Handler] = {op: h for family in FAMILIES for op, h in family.items()}
assert sum(map(len, FAMILIES)) == len(HANDLERS), "an op is handled by two families"
assert set(HANDLERS) | {"mig.tail", "sys.batch"} == set(C.OPS)


# ---------------------------------------------------------------------------


class StateMachine:
    """Applies committed entries to one partition store."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.applied_ops: dict[str, int] = {}

    def apply(self, index: int, data: bytes) -> Result | None:
        return self.apply_batch([(index, data)])[0]

    def apply_batch(self, entries: Sequence[tuple[int, bytes]]) -> list[Result | None]:
        """Apply entries in order in one write transaction (group commit).

        Returns one result per entry; ``None`` for an entry at or below the
        applied index (already applied before). If the map is full at its
        maximum, the entries that still fit are applied (each in its own
        transaction, in order) and the first that does not, and every one
        after it, get STORAGE_FULL and write nothing, so the caller may retry
        those entries later (indexes not consumed); RESIZE_DEFERRED likewise
        while a snapshot image pins the map. Once an entry gets either marker,
        every later entry gets it too: an entry is never applied after one
        that was not (the applied index would pass the unapplied one).
        """
        while True:
            try:
                return self._apply_txn(entries)
            except lmdb.MapFullError:
                try:
                    self.store.grow(wait_for_pins=False)
                except ResizeBusy:
                    return [RESIZE_DEFERRED] * len(entries)  # nothing written: retried at the next tick
                except StorageFull:
                    if len(entries) > 1:
                        # Keep every entry that still fits; stop at the first that doesn't.
                        out: list[Result | None] = []
                        for i, entry in enumerate(entries):
                            res = self.apply_batch([entry])
                            out.extend(res)
                            if res[0] is STORAGE_FULL or res[0] is RESIZE_DEFERRED:
                                # (a disk reserve that clears during the loop can make the next grow busy)
                                out.extend([res[0]] * (len(entries) - i - 1))
                                break
                        return out
                    return [STORAGE_FULL]

    def _apply_txn(self, entries: Sequence[tuple[int, bytes]]) -> list[Result | None]:
        results: list[Result | None] = []
        ops: list[str] = []
        with self.store.write() as txn:
            applied = keys.get_applied(txn)
            for index, data in entries:
                if index <= applied:
                    results.append(None)
                    continue
                res, op = self._apply_one(txn, index, data)
                results.append(res)
                if op == "sys.batch" and res.get("ok"):
                    ops.extend(r.get("_op", "invalid") for r in res["_batch"])
                else:
                    ops.append(op)
                applied = index
            keys.put_applied(txn, applied)
        for op in ops:
            self.applied_ops[op] = self.applied_ops.get(op, 0) + 1
        return results

    def _apply_one(self, txn: Txn, index: int, data: bytes) -> tuple[Result, str]:
        try:
            cmd = C.decode(data)
        except C.CommandError as e:
            return C.err("invalid_argument", str(e)), "invalid"
        op = cmd["op"]
        if op == "sys.batch":
            return self._apply_batch_entry(txn, index, cmd), op
        if op == "mig.tail":
            return self._apply_tail(txn, index, cmd), op
        return self._apply_cmd(txn, index, cmd, data, replay=False), op

    def _apply_batch_entry(self, txn: Txn, index: int, cmd: dict[str, Any]) -> Result:
        """``sys.batch``: the commands of one entry in order, each as if it had an
        entry of its own (its own nested transaction and result). A command
        without ``rnd`` derives its ids from ``index.position``."""
        commands = cmd.get("cmds")
        if not isinstance(commands, list) or not all(isinstance(c, bytes) for c in commands):
            return C.err("invalid_argument", "sys.batch without a list of commands")
        results: list[Result] = []
        for sub, data in enumerate(commands, start=1):
            try:
                inner = C.decode(data)
            except C.CommandError as e:
                results.append({**C.err("invalid_argument", str(e)), "_op": "invalid"})
                continue
            if inner["op"] == "sys.batch":
                results.append({**C.err("invalid_argument", "a sys.batch inside a sys.batch"), "_op": "invalid"})
            elif inner["op"] == "mig.tail":
                results.append(self._apply_tail(txn, index, inner))
            else:
                results.append(self._apply_cmd(txn, index, inner, data, replay=False, sub=sub))
        return C.ok(_batch=results, _op="sys.batch")

    def _apply_cmd(
        self, txn: Txn, index: int, cmd: dict[str, Any], data: bytes, *, replay: bool, sub: int = 0
    ) -> Result:
        """One command in a nested txn: all of it or nothing.

        ``replay``: a command forwarded from a migration's source (``mig.tail``),
        applied to the arriving shard exactly as the source applied it.
        """
        op = cmd["op"]
        child = self.store.env.begin(write=True, parent=txn)
        ctx = Ctx(child, cmd, index, sub)
        try:
            leaving = None if replay else moving.check_writable(child, cmd)
            result = HANDLERS[op](ctx)
            ctx.flush()
            if leaving is not None:
                moving.record_tail(child, cmd, index, data)
        except Reject as r:
            child.abort()
            return {**r.result, "_op": op}
        except lmdb.MapFullError:
            child.abort()
            raise
        except Exception:  # a bug: deterministic on every replica, never half-applied
            child.abort()
            log.exception("apply failed at index %d (op %s)", index, op)
            return C.err("internal", f"internal error applying {op}")
        child.commit()
        result["_op"] = op
        if ctx.events:
            result["_events"] = ctx.events
        return result

    def _apply_tail(self, txn: Txn, index: int, cmd: dict[str, Any]) -> Result:
        """``mig.tail``: re-apply the source's commands, numbered, in order, each at most once."""
        child = self.store.env.begin(write=True, parent=txn)
        ctx = Ctx(child, cmd, index)
        try:
            st = moving.tail_state(ctx)
            seq = cmd["from"]
            applied = 0
            for source_index, data in cmd["entries"]:
                if seq <= st["seq"]:
                    seq += 1
                    continue  # forwarded before (a retried proposal)
                if seq != st["seq"] + 1:
                    raise Reject("failed_precondition", f"tail entry {seq} before entry {st['seq'] + 1}")
                inner = C.decode(data)
                if (inner["org"], inner["ns"]) != (ctx.org, ctx.ns) or inner["op"].startswith("mig."):
                    raise Reject("invalid_argument", "a tail entry of another shard")
                self._apply_cmd(child, source_index, inner, data, replay=True)
                st["seq"] = seq
                seq += 1
                applied += 1
            moving.save_tail_seq(child, ctx.org, ctx.ns, st)
        except Reject as r:
            child.abort()
            return {**r.result, "_op": "mig.tail"}
        except C.CommandError as e:
            child.abort()
            return {**C.err("invalid_argument", str(e)), "_op": "mig.tail"}
        child.commit()
        return C.ok(seq=st["seq"], applied=applied, _op="mig.tail")

