"""Batch operations: terminate, cancel or signal every open run a query matches (SPEC §5.9).

The state machine holds what must survive a failover: the targets, captured
when ``batch.start`` applies (the open runs matching the query at that log
index, in workflowId/runId order, so every replica captures the same list),
and a cursor with counts. The partition leader does the work (one proposal
per item, see ``cluster.leader.batches``) and records progress with
``batch.progress``; a new leader resumes from the stored cursor, and every
item is idempotent, so nothing is skipped and nothing done twice matters.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard.ctx import OPEN, Ctx, Handler, Reject, Result, require_namespace, unpack
from hanzo_tasks.shard.keys import ShardKeys, run_suffix
from hanzo_tasks.shard.txn import ReadTxn
from hanzo_tasks.shard.visibility import QueryError, compile_query, run_view

OPERATIONS = ("BATCH_OPERATION_TYPE_TERMINATE", "BATCH_OPERATION_TYPE_CANCEL", "BATCH_OPERATION_TYPE_SIGNAL")
RUNNING = "BATCH_OPERATION_STATE_RUNNING"
COMPLETED = "BATCH_OPERATION_STATE_COMPLETED"
FAILED = "BATCH_OPERATION_STATE_FAILED"
TERMINATED = "BATCH_OPERATION_STATE_TERMINATED"


def _attrs(ctx: Ctx) -> dict[str, str]:
    prefix = ctx.k.attr_prefix()
    cur = ctx.txn.cursor()
    out: dict[str, str] = {}
    if cur.set_range(prefix):
        for k, v in cur:
            if not k.startswith(prefix):
                break
            out[k[len(prefix):].decode()] = unpack(v)
    return out


def op_batch_start(ctx: Ctx) -> Result:
    """Capture the targets and store the RUNNING record. The id comes from
    the proposer (derived from the requestId when there is one), so a
    repeated start finds its record and returns it unchanged."""
    require_namespace(ctx, for_write=True)
    cmd = ctx.cmd
    bid = cmd["batchId"]
    existing = ctx.get(ctx.k.batch(bid))
    if existing is not None:
        return C.ok(batch=existing, started=False)
    if cmd["operation"] not in OPERATIONS:
        raise Reject("invalid_argument", f"unsupported batch operation {cmd['operation']}")
    try:
        query = compile_query(cmd["query"], _attrs(ctx))
    except QueryError as e:
        raise Reject("invalid_argument", f"bad query: {e}") from None
    limit = int(cmd["max"])
    prefix = ctx.k.runs_prefix()
    targets: list[bytes] = []
    cur = ctx.txn.cursor()
    if cur.set_range(prefix):
        for k, v in cur:
            if not k.startswith(prefix):
                break
            run = unpack(v)
            if run["status"] in OPEN and query.matches(run_view(run)):
                targets.append(k[len(prefix):])
                if len(targets) > limit:
                    raise Reject("invalid_argument", f"the query matches more than {limit} open runs "
                                                     "(limits.max_batch_size)")
    for suffix in targets:
        ctx.put_raw(ctx.k.batch_target(bid, suffix), b"")
    rec: dict[str, Any] = {
        "batchId": bid, "namespace": ctx.ns, "operation": cmd["operation"], "reason": cmd.get("reason") or "",
        "query": cmd["query"], "state": RUNNING, "startTime": ctx.now,
        "totalOperationCount": len(targets), "completeOperationCount": 0, "failureOperationCount": 0,
        "rps": cmd["rps"], "cursor": "",
    }
    if cmd.get("signal") is not None:
        rec["signal"] = cmd["signal"]
    if cmd.get("identity"):
        rec["identity"] = cmd["identity"]
    ctx.notify("batch.started", batch_id=bid)
    if not targets:
        _close(ctx, rec, COMPLETED)
    ctx.put(ctx.k.batch(bid), rec)
    return C.ok(batch=rec, started=True)


def _close(ctx: Ctx, rec: dict[str, Any], state: str) -> None:
    rec["state"] = state
    rec["closeTime"] = ctx.now
    _drop_targets(ctx, rec["batchId"])
    if state != TERMINATED:
        ctx.notify("batch.completed", batch_id=rec["batchId"])


def _drop_targets(ctx: Ctx, bid: str) -> None:
    prefix = ctx.k.batch_targets(bid)
    cur = ctx.txn.cursor()
    if cur.set_range(prefix):
        while cur.key().startswith(prefix):
            if not cur.delete():
                break


def op_batch_progress(ctx: Ctx) -> Result:
    """Work done up to ``cursor`` (a target's ``<wid> 0 <rid>``), with the
    counts up to it. A proposal at or behind the stored cursor (a former
    leader's, late) changes nothing; past the last target the batch closes."""
    bid = ctx.cmd["batchId"]
    rec = ctx.get(ctx.k.batch(bid))
    if rec is None:
        raise Reject("not_found", f"batch {bid} not found")
    cursor = ctx.cmd["cursor"]
    if rec["state"] != RUNNING or cursor.encode() <= rec["cursor"].encode():
        return C.ok(batch=rec, moved=False)
    complete, failure = int(ctx.cmd["complete"]), int(ctx.cmd["failure"])
    rec["cursor"] = cursor
    rec["completeOperationCount"] = min(complete, rec["totalOperationCount"])
    rec["failureOperationCount"] = min(failure, rec["totalOperationCount"] - rec["completeOperationCount"])
    if next_targets(ctx.txn, ctx.k, bid, cursor, 1) == []:
        total, failed = rec["totalOperationCount"], rec["failureOperationCount"]
        _close(ctx, rec, FAILED if total and failed == total else COMPLETED)
    ctx.put(ctx.k.batch(bid), rec)
    return C.ok(batch=rec, moved=True)


def op_batch_terminate(ctx: Ctx) -> Result:
    """Stop a RUNNING batch (TERMINATED); a closed one is returned unchanged."""
    bid = ctx.cmd["batchId"]
    rec = ctx.get(ctx.k.batch(bid))
    if rec is None:
        raise Reject("not_found", f"batch {bid} not found")
    if rec["state"] == RUNNING:
        _close(ctx, rec, TERMINATED)
        ctx.notify("batch.terminated", batch_id=bid, reason=ctx.cmd.get("reason") or "",
                   identity=ctx.cmd.get("identity") or "")
        ctx.put(ctx.k.batch(bid), rec)
    return C.ok(batch=rec)


HANDLERS: dict[str, Handler] = {"batch.start": op_batch_start, "batch.progress": op_batch_progress,
            "batch.terminate": op_batch_terminate}


def next_targets(txn: ReadTxn, k: ShardKeys, bid: str, after: str, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` targets (workflowId, runId) after ``after`` ("" = from the start)."""
    prefix = k.batch_targets(bid)
    start = prefix + after.encode() if after else prefix
    out: list[tuple[str, str]] = []
    cur = txn.cursor()
    if not cur.set_range(start):
        return out
    for key in cur.iternext(values=False):
        if not key.startswith(prefix) or len(out) >= limit:
            break
        suffix = key[len(prefix):]
        if after and suffix == after.encode():
            continue
        wid, _, rid = suffix.rpartition(b"\x00")
        out.append((wid.decode(), rid.decode()))
    return out


def cursor_of(wid: str, rid: str) -> str:
    """The cursor that stands for a target (its key suffix)."""
    return run_suffix(wid, rid).decode()
