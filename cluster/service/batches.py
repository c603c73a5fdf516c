"""Batch operations (SPEC §4.7, §5.9): start one over the runs a query matches,
describe, terminate and list; the leader's batch runner does the work.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from typing import Any

from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service.forwarding import Concept, routed
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard import batches, reads

log = logging.getLogger("tasks.service")

Json = dict[str, Any]


class Batches(Concept):
    """Batch operations: the batches half of a node's service."""

    attr = "batches"

    @routed
    async def start_batch(self, org: str, ns: str, body: Json) -> Json:
        await self.svc.prepare(org, ns, rate_limited=True)
        op = body.get("operation")
        if op == "BATCH_OPERATION_TYPE_RESET":
            raise I.bad("BATCH_OPERATION_TYPE_RESET is not supported")
        if op not in batches.OPERATIONS:
            raise I.bad(f"operation must be one of {', '.join(batches.OPERATIONS)}")
        query = body.get("query")
        if not isinstance(query, str):
            raise I.bad("query (the visibility query of the runs to act on) is required")
        self.svc.workflows.compile_query(org, ns, query)  # a bad query is 400 now, not a failed batch
        signal = None
        if op == "BATCH_OPERATION_TYPE_SIGNAL":
            sig = body.get("signal")
            if not isinstance(sig, dict) or not isinstance(sig.get("name"), str) or not sig["name"]:
                raise I.bad("signal {name, input?} is required for BATCH_OPERATION_TYPE_SIGNAL")
            names.check_id(sig["name"], "signal name")
            signal = {"name": sig["name"], "input": I.payload(sig, "input", self.svc.max_payload)}
        rps = body.get("rps", 50)
        if isinstance(rps, bool) or not isinstance(rps, int | float) or not 0 < rps <= 10_000:
            raise I.bad("rps must be a number above 0 and at most 10000")
        rid = I.request_id(body)
        # The id is the proposer's: from the requestId when there is one, so a
        # repeated start finds the batch it started (idempotent).
        bid = hashlib.sha256(f"{org}/{ns}/{rid}".encode()).hexdigest()[:32] if rid else secrets.token_hex(16)
        res = await self.svc.propose(
            org, ns, "batch.start", batchId=bid, operation=op, query=query, signal=signal, rps=rps,
            reason=I.opt_str(body, "reason") or "", identity=I.opt_str(body, "identity") or "",
            max=self.svc.cfg.limits.max_batch_size,
        )
        return render.batch(res["batch"])

    @routed
    async def describe_batch(self, org: str, ns: str, bid: str) -> Json:
        await self.svc.prepare(org, ns)
        names.check_id(bid, "batch id")
        with self.svc.read_txn(org, ns) as txn:
            rec = reads.batch(txn, org, ns, bid)
        if rec is None:
            raise ApiError("not_found", f"batch {bid} not found")
        return render.batch(rec)

    @routed
    async def terminate_batch(self, org: str, ns: str, bid: str, body: Json) -> Json:
        await self.svc.prepare(org, ns)
        names.check_id(bid, "batch id")
        res = await self.svc.propose(org, ns, "batch.terminate", batchId=bid, reason=I.opt_str(body, "reason") or "",
                                 identity=I.opt_str(body, "identity") or "")
        return render.batch(res["batch"])

    @routed
    async def list_batches(self, org: str, ns: str, size: int, token: str | None) -> Json:
        """Newest first (startTime descending, then id)."""
        await self.svc.prepare(org, ns)
        bound = f"{org}/{ns}"
        after = I.read_token(token, "batches", bound)
        with self.svc.read_txn(org, ns) as txn:
            recs = reads.all_batches(txn, org, ns)

        def order(r: Json) -> bytes:
            return f"{(1 << 63) - r['startTime']:020d}/{r['batchId']}".encode()

        recs = sorted((r for r in recs if after is None or order(r) > after), key=order)
        page, more = recs[:size], len(recs) > size
        return {"batches": [render.batch(r) for r in page],
                "nextPageToken": I.make_token("batches", bound, order(page[-1]) if more else None)}
