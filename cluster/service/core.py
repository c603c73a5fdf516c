"""The service layer: what every API of a node calls.

It validates requests, stamps the non-deterministic parts of a command (the
time, the randomness that run ids are drawn from), proposes the command to the
shard's partition through the Replicator, and turns results into records or
``ApiError``s. Reads open an LMDB read transaction on the local replica.

Transports (HTTP now, ZAP and MCP later) only parse their own framing and
field names; the rules live here, once.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgpack
from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service import schedule_input as S
from hanzo_tasks.cluster.service.forwarding import CALL_TIMEOUT, Forwarder, routed
from hanzo_tasks.cluster.service.ratelimit import TokenBuckets
from hanzo_tasks.cluster.service.records import RecordsService
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.schedule_spec import jitter_offset
from hanzo_tasks.protocol.timefmt import parse_time
from hanzo_tasks.replication import NodeReplicator, NotLeader
from hanzo_tasks.routing import partition_of
from hanzo_tasks.shard import batches, encode, moving, reads
from hanzo_tasks.shard.visibility import QueryError, compile_query, run_view

log = logging.getLogger("tasks.service")

Json = dict[str, Any]

# Set by read_barrier on a node that does not hold the shard: the barrier is
# taken by the replica that serves the forwarded read (in the same task).
_barrier_due: contextvars.ContextVar[bool] = contextvars.ContextVar("barrier_due", default=False)

READ_BARRIER_ROUNDS = 4
"""Partitions one read barrier follows: each extra round means a migration flipped
the shard while the previous barrier was in flight, which takes a whole job."""


def wall_ms() -> int:
    return int(time.time() * 1000)


_view = run_view  # the fields the visibility query language sees


class Service(RecordsService):
    """One node's engine operations over its replicator."""

    def __init__(
        self,
        cfg: Any,
        replicator: NodeReplicator,
        *,
        node_id: str,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.cfg = cfg
        self.replicator = replicator
        self.node_id = node_id
        self.clock = clock
        self.default_namespace: str = cfg.default_namespace
        self.max_payload: int = cfg.limits.max_payload
        self._known_ns: set[tuple[str, str]] = set()
        self._ns_cache: dict[tuple[str, str], Json] = {}
        self._roles: dict[tuple[str, str, str], tuple[float, str | None]] = {}  # role_in's cache
        self.buckets = TokenBuckets()
        self.proposal_errors = 0
        self.on_proposed: Callable[[float], None] | None = None
        self.query_handler: Any = None  # set by the node's dispatcher
        self.fence_wait = cfg.migration.fence_wait / 1000.0
        # (org, ns) -> {partition, epoch}: shards a migration moved off their HRW partition.
        self.pins: dict[tuple[str, str], Json] = {}
        self.pins = replicator.meta.pins()  # a single node keeps none
        replicator.subscribe(self._on_apply)
        self.forwarder: Forwarder | None = Forwarder(self, replicator.rpc) if replicator.clustered else None

    # ---- plumbing ----------------------------------------------------------

    def partition(self, org: str, ns: str) -> int:
        """The shard's partition: its pin when a migration moved it, else its HRW choice."""
        pin = self.pins.get((org, ns))
        if pin is not None:
            return pin["partition"]
        return partition_of(org, ns, self.cfg.seed, self.replicator.partitions)

    def holds(self, org: str, ns: str) -> bool:
        """Whether this node holds a replica of the shard's partition (else requests are forwarded)."""
        return self.replicator.is_local(self.partition(org, ns))

    async def forward(self, method: str, org: str, ns: str, args: list[Any], kwargs: Json) -> Any:
        """Run a ``@routed`` method on a replica of the shard (see cluster.forwarding)."""
        if self.forwarder is None:
            raise ApiError("unavailable", "no replica of this namespace's partition here", retry_after=1)
        barrier = _barrier_due.get()
        _barrier_due.set(False)
        timeout = CALL_TIMEOUT + (self.cfg.timeouts.query_max / 1000.0 if method == "query_metadata" else 0.0)
        return await self.forwarder.call(self.partition(org, ns), "svc",
                                         {"m": method, "org": org, "ns": ns, "args": args, "kwargs": kwargs,
                                          "barrier": barrier}, timeout)

    async def read(self, org: str, ns: str, fn: str, *args: Any, barrier: bool = False) -> Any:
        """``shard.reads.<fn>(txn, org, ns, *args)`` on this node's replica, or on a
        replica's when this node holds none (after a barrier there if asked)."""
        if _barrier_due.get():
            _barrier_due.set(False)
            barrier = True
        if barrier and self.holds(org, ns):
            # Returns with the partition to read barriered, or (the shard moved to
            # a partition held elsewhere) leaves the barrier to the replica asked below.
            await self.read_barrier(org, ns)
            _barrier_due.set(False)
        if self.holds(org, ns):
            with self._read(org, ns) as txn:
                return getattr(reads, fn)(txn, org, ns, *args)
        if self.forwarder is None:
            raise ApiError("unavailable", "no replica of this namespace's partition here", retry_after=1)
        return await self.forwarder.call(self.partition(org, ns), "read",
                                         {"fn": fn, "org": org, "ns": ns, "args": list(args), "barrier": barrier})

    def _on_apply(self, group: int, index: int, result: Json) -> None:
        pin = result.get("pin")
        if pin is not None:  # a migration flipped: route the shard to its new partition
            org, ns, part, epoch = pin
            self.pins[(org, ns)] = {"partition": part, "epoch": epoch}
        for ev in result.get("_events", ()):
            if ev["kind"].startswith("namespace."):
                self._ns_cache.pop((ev["org"], ev["namespace"]), None)
            elif ev["kind"] == "identity.changed":  # replicas see a grant at once; other nodes within ROLE_CACHE_S
                self._roles.pop((ev["org"], ev["namespace"], ev["email"]), None)

    async def propose(self, org: str, ns: str, op: str, **fields: Any) -> Json:
        """Stamp, propose and unwrap one command; business errors raise ApiError."""
        cmd: Json = {"v": 1, "op": op, "org": org, "ns": ns, "now": self.clock()}
        cmd["rnd"] = secrets.token_hex(16)
        cmd.update(fields)
        try:
            data = encode(cmd)
        except (OverflowError, TypeError, ValueError) as e:
            # JSON allows integers msgpack cannot carry (beyond 64 bits).
            raise ApiError("invalid_argument", f"a value cannot be stored: {e}") from None
        fence_deadline: float | None = None
        while True:
            group = self.partition(org, ns)
            started = time.perf_counter()
            try:
                res = await self.replicator.propose(group, data)
                if self.on_proposed is not None:
                    self.on_proposed(time.perf_counter() - started)
            except NotLeader as e:
                self.proposal_errors += 1
                raise ApiError("unavailable", f"shard unavailable: {e}", retry_after=1) from None
            if res.get("code") != "fenced":
                break
            # The shard is moving (SPEC §4.10): wait for the cutover, then follow
            # its pin; the same command (same rnd) is applied at most once.
            now = time.monotonic()
            if fence_deadline is None:
                fence_deadline = now + self.fence_wait
                if (res.get("details") or {}).get("moveRole") == "moved":
                    await self.meta_barrier()  # moved already: this node's pins lag
            if now >= fence_deadline:
                raise ApiError("unavailable", f"namespace {ns} is being migrated; retry", retry_after=1)
            await asyncio.sleep(0.02)
        if not res.get("ok"):
            code = res.get("code", "internal")
            if code in ("unavailable", "storage_full", "internal"):
                self.proposal_errors += 1
            raise ApiError(code, res.get("message", code), res.get("details"), retry_after=1 if code == "unavailable" else None)
        return res

    async def read_barrier(self, org: str, ns: str) -> None:
        """Make the next local read reflect every write acknowledged before it began.

        With Raft, a barrier entry is committed through the leader (which needs a
        quorum, so a deposed leader cannot answer) and applied here; reads that
        follow see everything committed before. A single node needs nothing.

        The barrier speaks only for the partition it went through, so it returns
        only once the partition the shard resolves to now (the one the read that
        follows opens, with no await in between) is the one just barriered. A
        pin applied while a barrier was in flight (a migration flipped) sends
        the loop round again, to barrier the new partition before it is read.

        A shard that a migration fenced or moved away is read only after this
        node's meta replica has caught up too (a meta barrier): a node that
        restarted, or lags, may still route to the old partition, whose copy
        stops receiving writes at the fence and is collected after the flip.
        When the pin moved, the read follows it.
        """
        if not self.replicator.clustered:
            return
        names.check_namespace(ns)
        for _ in range(READ_BARRIER_ROUNDS):
            if not self.holds(org, ns):
                _barrier_due.set(True)  # the replica that serves the read takes it
                return
            group = self.partition(org, ns)
            await self._barrier_on(group, org, ns)
            with self.replicator.store(group).read() as txn:  # the partition barriered, whatever pins say now
                st = moving.read_state(txn, org, ns)
            if st is not None and (st["role"] == "moved" or (st["role"] == "src" and st.get("fenced"))):
                await self.meta_barrier()
            if self.partition(org, ns) == group:
                return  # not flipped (or not yet: the fenced source is still the authoritative copy)
            # The pin moved while we waited: barrier where the shard lives now.
        raise ApiError("unavailable", f"namespace {ns} kept moving while it was read; retry", retry_after=1)

    async def _barrier_on(self, group: int, org: str, ns: str) -> None:
        """Commit a ``sys.barrier`` through ``group`` itself (never re-resolved: see read_barrier)."""
        cmd: Json = {"v": 1, "op": "sys.barrier", "org": org, "ns": ns, "now": self.clock(),
                     "rnd": secrets.token_hex(16)}
        try:
            res = await self.replicator.propose(group, encode(cmd))
        except NotLeader as e:
            self.proposal_errors += 1
            raise ApiError("unavailable", f"shard unavailable: {e}", retry_after=1) from None
        if not res.get("ok"):
            self.proposal_errors += 1
            code = res.get("code", "unavailable")
            raise ApiError(code, res.get("message", code), res.get("details"),
                           retry_after=1 if code == "unavailable" else None)

    async def meta_barrier(self) -> None:
        """Apply every committed meta entry here (placement pins) before going on."""
        if not self.replicator.clustered:
            return  # a single node keeps no cluster directory
        res = await self.replicator.propose(self.replicator.meta_group,
                                            msgpack.packb({"op": "sys.barrier"}, use_bin_type=True))
        if not res.get("ok"):
            raise ApiError("unavailable", f"cluster directory unavailable: {res.get('message')}", retry_after=1)

    def _read(self, org: str, ns: str):
        return self.replicator.store(self.partition(org, ns)).read()

    async def ensure_namespace(self, org: str, ns: str) -> None:
        """The default namespace exists implicitly: the first request registers it."""
        if ns != self.default_namespace or (org, ns) in self._known_ns:
            return
        exists = await self.read(org, ns, "namespace") is not None
        if not exists:
            await self.propose(org, ns, "ns.register", implicit=True, region=self.cfg.region)
        self._known_ns.add((org, ns))

    def namespace_record(self, org: str, ns: str) -> Json:
        rec = self._ns_cache.get((org, ns))
        if rec is None:
            with self._read(org, ns) as txn:
                rec = reads.namespace(txn, org, ns)
            if rec is None:
                raise ApiError("not_found", f"namespace {ns} not found")
            self._ns_cache[(org, ns)] = rec
        return rec

    async def _prepare(self, org: str, ns: str, *, rate_limited: bool = False) -> Json:
        names.check_namespace(ns)
        await self.ensure_namespace(org, ns)
        if self.holds(org, ns):
            rec = self.namespace_record(org, ns)
        else:
            rec = await self.read(org, ns, "namespace")
            if rec is None:
                raise ApiError("not_found", f"namespace {ns} not found")
        if rate_limited:
            limit = rec.get("apsLimit", 400)
            if limit and not self.buckets.take((org, ns), limit, self.clock()):
                raise ApiError("rate_limited", f"namespace {ns} is over its apsLimit of {limit}/s", retry_after=1)
        return rec

    # ---- namespaces ----------------------------------------------------------

    def _ns_fields(self, body: Json, *, create: bool) -> Json:
        out: Json = {}
        for f in ("description", "ownerEmail", "historyArchivalState", "historyArchivalUri",
                  "visibilityArchivalState", "visibilityArchivalUri"):
            v = I.opt_str(body, f)
            if v is not None:
                out[f] = v
        if out.get("ownerEmail"):
            out["ownerEmail"] = names.check_email(out["ownerEmail"])
        retention = I.opt_duration(body, "retention", lo_ms=1000)
        if retention is None:
            retention = I.opt_duration(body, "workflowExecutionRetentionTtl", lo_ms=1000)
        if retention is not None:
            out["retention"] = retention
        aps = I.opt_int(body, "apsLimit", lo=0)
        if aps is not None:
            out["apsLimit"] = aps
        cd = I.opt_obj(body, "customData")
        if cd is not None:
            if not all(isinstance(v, str) for v in cd.values()):
                raise I.bad("customData values must be strings")
            out["customData"] = cd
        return out

    def _check_ns_writes(self) -> None:
        if self.cfg.settings.namespace_write_disabled:
            raise ApiError("permission_denied", "namespace writes are disabled")

    async def register_namespace(self, org: str, body: Json) -> Json:
        self._check_ns_writes()
        info = I.opt_obj(body, "namespaceInfo") or {}
        name = info.get("name", body.get("name"))
        if name is None:
            raise I.bad("namespaceInfo.name is required")
        ns = names.check_namespace(name)
        return await self.register_namespace_in(org, ns, body)

    @routed
    async def register_namespace_in(self, org: str, ns: str, body: Json) -> Json:
        info = I.opt_obj(body, "namespaceInfo") or {}
        fields = self._ns_fields(info, create=True)
        cfg = I.opt_obj(body, "config") or {}
        fields.update(self._ns_fields(cfg, create=True))
        res = await self.propose(org, ns, "ns.register", region=self.cfg.region, **fields)
        return render.namespace(res["namespace"])

    @routed
    async def update_namespace(self, org: str, ns: str, body: Json) -> Json:
        self._check_ns_writes()
        names.check_namespace(ns)
        await self.ensure_namespace(org, ns)
        res = await self.propose(org, ns, "ns.update", **self._ns_fields(body, create=False))
        return render.namespace(res["namespace"])

    @routed
    async def delete_namespace(self, org: str, ns: str) -> Json:
        self._check_ns_writes()
        names.check_namespace(ns)
        await self.ensure_namespace(org, ns)
        res = await self.propose(org, ns, "ns.delete")
        return render.namespace(res["namespace"])

    @routed
    async def get_namespace(self, org: str, ns: str) -> Json:
        names.check_namespace(ns)
        await self.ensure_namespace(org, ns)
        with self._read(org, ns) as txn:
            rec = reads.namespace(txn, org, ns)
        if rec is None:
            raise ApiError("not_found", f"namespace {ns} not found")
        return render.namespace(rec)

    async def list_namespaces(self, org: str, size: int, token: str | None) -> Json:
        await self.ensure_namespace(org, self.default_namespace)
        after = I.read_token(token, "namespaces", org)
        all_names: list[str] = []
        for p in range(self.replicator.partitions):
            if self.replicator.is_local(p):
                with self.replicator.store(p).read() as txn:
                    all_names.extend(reads.namespace_names(txn, org))
            elif self.forwarder is not None:
                all_names.extend(await self.forwarder.call(p, "nsnames", {"org": org, "p": p}))
        all_names = sorted(set(all_names))  # a moving namespace is in two partitions for a moment
        if after is not None:
            all_names = [n for n in all_names if n.encode() > after]
        page = all_names[:size]
        out = []
        for n in page:
            rec = await self.read(org, n, "namespace")
            if rec is not None:
                out.append(render.namespace(rec))
        more = len(all_names) > size
        return {
            "namespaces": out,
            "nextPageToken": I.make_token("namespaces", org, page[-1].encode() if more else None),
        }

    # ---- workflows -------------------------------------------------------------

    def start_spec(self, org: str, ns: str, body: Json) -> Json:
        """Validate a StartWorkflow body (SPEC §5.3) into the command's ``start`` map."""
        wtype = I.name_obj(body, "workflowType", required=True)
        spec: Json = {"type": wtype}
        wid = I.opt_str(body, "workflowId")
        if wid:
            spec["workflowId"] = names.check_id(wid, "workflowId")
        rid = I.opt_str(body, "runId")
        if rid:
            spec["runId"] = names.check_run_id(rid)
        spec["taskQueue"] = I.name_obj(body, "taskQueue", required=False) or "default"
        if "input" in body:
            spec["input"] = I.payload(body, "input", self.max_payload)
        req = I.request_id(body)
        if req:
            spec["requestId"] = req
        if body.get("workflowIdConflictPolicy") is not None:
            spec["conflict"] = I.conflict_policy(body["workflowIdConflictPolicy"])
        for f in ("workflowExecutionTimeout", "workflowRunTimeout"):
            ms = I.opt_duration(body, f, lo_ms=0)
            if ms:
                spec[f] = ms
        spec["workflowTaskTimeout"] = (
            I.opt_duration(body, "workflowTaskTimeout", lo_ms=1000, hi_ms=600_000) or 10_000
        )
        rp = I.retry_policy(body.get("retryPolicy"))
        if rp is not None:
            spec["retryPolicy"] = rp
        memo = I.opt_obj(body, "memo")
        if memo is not None:
            spec["memo"] = I.payload(body, "memo", self.max_payload)
        sa = I.opt_obj(body, "searchAttributes")
        if sa:
            spec["searchAttrs"] = self._check_search_attrs(org, ns, sa)
        ident = I.opt_str(body, "identity")
        if ident:
            spec["identity"] = ident
        return spec

    def _check_search_attrs(self, org: str, ns: str, sa: Json) -> Json:
        with self._read(org, ns) as txn:
            registered = reads.search_attrs(txn, org, ns)
        for name, value in sa.items():
            typ = registered.get(name)
            if typ is None:
                raise I.bad(f"search attribute {name} is not registered")
            if not _attr_type_ok(typ, value):
                raise I.bad(f"search attribute {name} must be of type {typ}")
        return sa

    @routed
    async def start_workflow(self, org: str, ns: str, body: Json, *, signal: bool = False) -> Json:
        await self._prepare(org, ns, rate_limited=True)
        spec = self.start_spec(org, ns, body)
        fields: Json = {"start": spec}
        if signal:
            name = body.get("signalName")
            if not isinstance(name, str) or not name:
                raise I.bad("signalName is required")
            names.check_id(name, "signalName")
            key = "signalPayload" if "signalPayload" in body else "signalInput"
            sig: Json = {
                "signalName": name,
                "input": I.payload(body, key, self.max_payload),
                "identity": spec.get("identity") or "",
            }
            fields["signal"] = sig
        res = await self.propose(org, ns, "wf.start", **fields)
        out = render.run(res["run"])
        out["started"] = res["started"]
        return out

    @routed
    async def signal_workflow(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        await self._prepare(org, ns, rate_limited=True)
        names.check_id(wid, "workflowId")
        name = body.get("name", body.get("signalName"))
        if not isinstance(name, str) or not name:
            raise I.bad("signal name is required")
        names.check_id(name, "signal name")
        key = "payload" if "payload" in body else "input"
        await self.propose(
            org,
            ns,
            "wf.signal",
            workflowId=wid,
            runId=rid,
            name=name,
            input=I.payload(body, key, self.max_payload),
            identity=I.opt_str(body, "identity") or "",
            requestId=I.request_id(body),
        )
        return {"status": "signaled"}

    async def _run_op(self, op: str, org: str, ns: str, wid: str, rid: str | None, **fields: Any) -> Json:
        await self._prepare(org, ns, rate_limited=op in ("wf.cancel", "wf.terminate", "wf.reset"))
        names.check_id(wid, "workflowId")
        res = await self.propose(org, ns, op, workflowId=wid, runId=rid, **fields)
        return render.run(res["run"])

    @routed
    async def cancel_workflow(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        return await self._run_op(
            "wf.cancel", org, ns, wid, rid,
            reason=I.opt_str(body, "reason") or "", identity=I.opt_str(body, "identity") or "",
            cancelAckMs=self.cfg.timeouts.cancel_ack,
        )

    @routed
    async def terminate_workflow(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        return await self._run_op(
            "wf.terminate", org, ns, wid, rid,
            reason=I.opt_str(body, "reason") or "", identity=I.opt_str(body, "identity") or "",
        )

    @routed
    async def reset_workflow(self, org: str, ns: str, wid: str, body: Json) -> Json:
        rid = I.opt_str(body, "runId") or None
        if rid:
            names.check_run_id(rid)
        event_id = body.get("eventId")
        if isinstance(event_id, str) and event_id.isascii() and event_id.isdigit():
            event_id = int(event_id)
        if not isinstance(event_id, int) or isinstance(event_id, bool):
            raise I.bad("eventId must be an integer")
        return await self._run_op(
            "wf.reset", org, ns, wid, rid,
            eventId=event_id,
            reason=I.opt_str(body, "reason") or "",
            identity=I.opt_str(body, "identity") or "",
            requestId=I.request_id(body),
        )

    @routed
    async def workflow_metadata(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        fields: Json = {}
        for f in ("summary", "details", "updatedBy"):
            if f in body:
                v = body[f]
                if not isinstance(v, str):
                    raise I.bad(f"{f} must be a string")
                fields[f] = v
        return await self._run_op("wf.metadata", org, ns, wid, rid, **fields)

    @routed
    async def describe_workflow(self, org: str, ns: str, wid: str, rid: str | None) -> Json:
        await self._prepare(org, ns)
        names.check_id(wid, "workflowId")
        with self._read(org, ns) as txn:
            r = reads.run(txn, org, ns, wid, rid)
        if r is None:
            raise ApiError("not_found", f"workflow {wid} not found")
        return render.describe(r)

    @routed
    async def query_metadata(self, org: str, ns: str, wid: str, rid: str | None, body: Json) -> Json:
        """SPEC §5.4 queries: ``__workflow_metadata`` here, others by the worker holding the run."""
        await self._prepare(org, ns)
        names.check_id(wid, "workflowId")
        qtype = body.get("queryType")
        if not isinstance(qtype, str) or not qtype:
            raise I.bad("queryType is required")
        timeout = I.opt_duration(body, "timeout", lo_ms=1, hi_ms=self.cfg.timeouts.query_max)
        if timeout is None:
            timeout = self.cfg.timeouts.query_default
        with self._read(org, ns) as txn:
            r = reads.run(txn, org, ns, wid, rid)
        if r is None:
            raise ApiError("not_found", f"workflow {wid} not found")
        if qtype == "__workflow_metadata":
            return {"queryResult": {"workflowType": r["type"],
                                    "status": render.STATUS_PREFIX + r["status"],
                                    "historyLength": r["historyLength"], "attempt": r["attempt"]}}
        if r["status"] not in ("RUNNING", "CANCELING"):
            raise ApiError("failed_precondition", f"workflow {wid} is not running")
        if self.query_handler is None:
            raise ApiError("no_workers", "no worker holds this workflow", retry_after=1)
        result = await self.query_handler(org, ns, r, qtype, body.get("args"), timeout / 1000.0)
        return {"queryResult": result}

    def _compile(self, org: str, ns: str, query: str | None):
        if query is not None and len(query) > 4096:
            raise I.bad("query is longer than 4096 characters")
        with self._read(org, ns) as txn:
            attrs = reads.search_attrs(txn, org, ns)
        try:
            return compile_query(query or "", attrs)
        except QueryError as e:
            raise I.bad(f"bad query: {e}") from None

    @routed
    async def list_workflows(self, org: str, ns: str, query: str | None, size: int, token: str | None,
                             *, dead: bool = False) -> Json:
        await self._prepare(org, ns)
        q = self._compile(org, ns, query)
        kind = "dead" if dead else "workflows"
        after = I.read_token(token, kind, f"{org}/{ns}/{query or ''}")
        with self._read(org, ns) as txn:
            runs, last = reads.list_runs(txn, org, ns, lambda r: q.matches(_view(r)), after, size, dead=dead)
        out = []
        for r in runs:
            rec = render.run(r, full=False)
            if dead and r.get("deadLetterReason"):
                rec["deadLetterReason"] = r["deadLetterReason"]
            out.append(rec)
        return {"executions": out, "nextPageToken": I.make_token(kind, f"{org}/{ns}/{query or ''}", last)}

    @routed
    async def history(self, org: str, ns: str, wid: str, rid: str | None, after: int, reverse: bool,
                      size: int, token: str | None) -> Json:
        await self._prepare(org, ns)
        names.check_id(wid, "workflowId")
        with self._read(org, ns) as txn:
            r = reads.run(txn, org, ns, wid, rid)
            if r is None:
                raise ApiError("not_found", f"workflow {wid} not found")
            bound = f"{org}/{ns}/{r['runId']}/{int(reverse)}"
            cursor = I.read_token(token, "history", bound)
            if cursor is not None:
                after = I.token_int(cursor)
            events, nxt = reads.history(txn, org, ns, r["runId"], after, reverse, size, r["historyLength"])
        return {
            "events": [render.event(e) for e in events],
            "nextPageToken": I.make_token("history", bound, str(nxt).encode() if nxt else None),
            "nextCursor": nxt or 0,
        }

    @routed
    async def executions(self, org: str, ns: str, wid: str, size: int, token: str | None) -> Json:
        await self._prepare(org, ns)
        names.check_id(wid, "workflowId")
        with self._read(org, ns) as txn:
            runs = reads.runs_of(txn, org, ns, wid)
        if not runs:
            raise ApiError("not_found", f"workflow {wid} not found")
        bound = f"{org}/{ns}/{wid}"
        cursor = I.read_token(token, "executions", bound)
        start = I.token_int(cursor) if cursor else 0
        page = runs[start : start + size]
        more = start + size < len(runs)
        return {
            "executions": [render.run(r, full=False) for r in page],
            "nextPageToken": I.make_token("executions", bound, str(start + size).encode() if more else None),
        }

    # ---- standalone activities (SPEC §4.8) ----------------------------------------

    @routed
    async def start_activity(self, org: str, ns: str, body: Json) -> Json:
        await self._prepare(org, ns, rate_limited=True)
        aid = I.opt_str(body, "activityId")
        if not aid:
            raise I.bad("activityId is required")
        spec: Json = {"activityId": names.check_id(aid, "activityId"),
                      "type": I.name_obj(body, "activityType", required=True)}
        rid = I.opt_str(body, "runId")
        if rid:
            spec["runId"] = names.check_run_id(rid)
        tq = body.get("taskQueue", "default")
        if isinstance(tq, dict):
            tq = I.name_obj(body, "taskQueue", required=False) or "default"
        if not isinstance(tq, str) or not tq:
            raise I.bad("taskQueue must be a string")
        spec["taskQueue"] = names.check_id(tq, "taskQueue")
        if "input" in body:
            spec["input"] = I.payload(body, "input", self.max_payload)
        rp = I.retry_policy(body.get("retryPolicy"))
        if rp is not None:
            spec["retryPolicy"] = rp
        for f in ("scheduleToCloseTimeout", "scheduleToStartTimeout", "startToCloseTimeout", "heartbeatTimeout"):
            ms = I.opt_duration(body, f, lo_ms=0)
            if ms:
                spec[f] = ms
        ident = I.opt_str(body, "identity")
        if ident:
            spec["identity"] = ident
        req = I.request_id(body)
        if req:
            spec["requestId"] = req
        res = await self.propose(org, ns, "act.start", start=spec,
                                 defaultStartToClose=self.cfg.timeouts.activity_start_to_close)
        out = render.activity(res["activity"])
        out["started"] = res["started"]
        return out

    async def _activity_op(self, op: str, org: str, ns: str, aid: str, rid: str, **fields: Any) -> Json:
        await self._prepare(org, ns, rate_limited=op == "act.start")
        names.check_id(aid, "activityId")
        names.check_run_id(rid)
        res = await self.propose(org, ns, op, activityId=aid, runId=rid, **fields)
        return render.activity(res["activity"])

    @routed
    async def describe_activity(self, org: str, ns: str, aid: str, rid: str) -> Json:
        await self._prepare(org, ns)
        names.check_id(aid, "activityId")
        names.check_run_id(rid)
        with self._read(org, ns) as txn:
            a = reads.activity(txn, org, ns, aid, rid)
        if a is None:
            raise ApiError("not_found", f"activity {aid} run {rid} not found")
        return render.activity(a)

    @routed
    async def cancel_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        return await self._activity_op("act.cancel", org, ns, aid, rid, reason=I.opt_str(body, "reason") or "",
                                       identity=I.opt_str(body, "identity") or "")

    @routed
    async def complete_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        return await self._activity_op("act.complete", org, ns, aid, rid,
                                       result=I.payload(body, "result", self.max_payload),
                                       identity=I.opt_str(body, "identity") or "")

    @routed
    async def fail_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        cause = I.opt_str(body, "cause")
        if not cause:
            raise I.bad("cause is required")
        nr = I.opt_bool(body, "nonRetryable")
        return await self._activity_op("act.fail", org, ns, aid, rid, cause=cause,
                                       failure={"message": cause, "type": "", "nonRetryable": nr},
                                       identity=I.opt_str(body, "identity") or "")

    @routed
    async def heartbeat_activity(self, org: str, ns: str, aid: str, rid: str, body: Json) -> Json:
        return await self._activity_op("act.heartbeat", org, ns, aid, rid,
                                       details=I.payload(body, "details", self.max_payload))

    @routed
    async def list_activities(self, org: str, ns: str, size: int, token: str | None, cursor: str | None) -> Json:
        await self._prepare(org, ns)
        bound = f"{org}/{ns}"
        raw = I.read_token(token, "activities", bound)
        after: tuple[str, str] | None = None
        if raw is not None:
            try:
                aid, _, rid = raw.decode().partition("\x00")
            except UnicodeDecodeError:
                raise I.bad("malformed nextPageToken") from None
            after = (aid, rid)
        elif cursor:
            aid, sep, rid = cursor.partition("|")
            if not sep:
                raise I.bad("cursor must be <activityId>|<runId>")
            after = (names.check_id(aid, "activityId"), names.check_run_id(rid))
        with self._read(org, ns) as txn:
            items, last = reads.list_activities(txn, org, ns, after, size)
        return {
            "activities": [render.activity(a) for a in items],
            "nextPageToken": I.make_token("activities", bound, f"{last[0]}\x00{last[1]}".encode() if last else None),
            "nextCursor": f"{last[0]}|{last[1]}" if last else "",
        }

    @routed
    async def activity_history(self, org: str, ns: str, aid: str, rid: str, after: int, reverse: bool,
                               size: int, token: str | None) -> Json:
        await self._prepare(org, ns)
        names.check_id(aid, "activityId")
        names.check_run_id(rid)
        with self._read(org, ns) as txn:
            a = reads.activity(txn, org, ns, aid, rid)
            if a is None:
                raise ApiError("not_found", f"activity {aid} run {rid} not found")
            bound = f"{org}/{ns}/a/{aid}/{rid}/{int(reverse)}"
            cursor = I.read_token(token, "history", bound)
            if cursor is not None:
                after = I.token_int(cursor)
            events, nxt = reads.activity_history(txn, org, ns, rid, after, reverse, size, a["historyLength"])
        return {
            "events": [render.event(e) for e in events],
            "nextPageToken": I.make_token("history", bound, str(nxt).encode() if nxt else None),
            "nextCursor": nxt or 0,
        }

    # ---- schedules -------------------------------------------------------------

    def _schedule_fields(self, body: Json) -> Json:
        return {
            "spec": S.normalize_spec(body.get("spec")),
            "action": S.normalize_action(body.get("action"), self.max_payload),
            "policies": S.normalize_policies(body.get("policies")),
            "state": S.normalize_state(body.get("state")) if body.get("state") is not None else None,
        }

    @routed
    async def create_schedule(self, org: str, ns: str, body: Json, *, upsert: bool) -> Json:
        await self._prepare(org, ns)
        sid = S.check_schedule_id(body.get("scheduleId", body.get("schedule_id")))
        fields = self._schedule_fields(body)
        if fields["state"] is None:
            fields["state"] = S.normalize_state({})
        res = await self.propose(org, ns, "sched.create", scheduleId=sid, upsert=upsert, **fields)
        return self.render_schedule(org, ns, res["schedule"])

    @routed
    async def update_schedule(self, org: str, ns: str, sid: str, body: Json) -> Json:
        await self._prepare(org, ns)
        S.check_schedule_id(sid)
        res = await self.propose(org, ns, "sched.update", scheduleId=sid, **self._schedule_fields(body))
        return self.render_schedule(org, ns, res["schedule"])

    @routed
    async def delete_schedule(self, org: str, ns: str, sid: str) -> Json:
        await self._prepare(org, ns)
        S.check_schedule_id(sid)
        await self.propose(org, ns, "sched.delete", scheduleId=sid)
        return {"status": "deleted"}

    @routed
    async def pause_schedule(self, org: str, ns: str, sid: str, body: Json, paused: bool) -> Json:
        await self._prepare(org, ns)
        S.check_schedule_id(sid)
        await self.propose(org, ns, "sched.pause", scheduleId=sid, paused=paused, note=I.opt_str(body, "note"))
        return {"status": "paused" if paused else "running"}

    @routed
    async def trigger_schedule(self, org: str, ns: str, sid: str, body: Json) -> Json:
        await self._prepare(org, ns, rate_limited=True)
        S.check_schedule_id(sid)
        overlap = body.get("overlapPolicy")
        res = await self.propose(
            org, ns, "sched.trigger", scheduleId=sid, requestId=I.request_id(body),
            overlapPolicy=I.overlap_policy(overlap) if overlap is not None else None,
        )
        out: Json = {"status": res["status"]}
        if res.get("run") is not None:
            out["execution"] = render.run(res["run"])
        return out

    def _load_schedule(self, org: str, ns: str, sid: str) -> Json:
        with self._read(org, ns) as txn:
            s = reads.schedule(txn, org, ns, sid)
        if s is None:
            raise ApiError("not_found", f"schedule {sid} not found")
        return s

    @routed
    async def describe_schedule(self, org: str, ns: str, sid: str) -> Json:
        await self._prepare(org, ns)
        S.check_schedule_id(sid)
        return self.render_schedule(org, ns, self._load_schedule(org, ns, sid))

    def future_times(self, s: Json, count: int = 5) -> list[int]:
        state = s["state"]
        if state.get("paused") or (state.get("limitedActions") and state.get("remainingActions", 0) <= 0):
            return []
        times = S.times_for(s["spec"])
        jitter = S.jitter_ms(s["spec"])
        out: list[int] = []
        cursor = max(s["cursor"], self.clock())
        while len(out) < count:
            nxt = times.next_after(cursor)
            if nxt is None:
                break
            out.append(nxt + jitter_offset(s["scheduleId"], nxt, jitter))
            cursor = nxt
        return out

    def render_schedule(self, org: str, ns: str, s: Json) -> Json:
        status: dict[tuple[str, str], str] = {}
        with self._read(org, ns) as txn:
            for _st, _at, w, r in s["info"]["recent"]:
                run = reads.run(txn, org, ns, w, r)
                if run is not None:
                    status[(w, r)] = run["status"]
        return render.schedule(s, ns, future=self.future_times(s), run_status=status)

    @routed
    async def list_schedules(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self._prepare(org, ns)
        bound = f"{org}/{ns}"
        after = I.read_token(token, "schedules", bound)
        with self._read(org, ns) as txn:
            items, last = reads.list_schedules(txn, org, ns, after, size)
        return {
            "schedules": [self.render_schedule(org, ns, s) for s in items],
            "nextPageToken": I.make_token("schedules", bound, last),
        }

    @routed
    async def matching_times(self, org: str, ns: str, sid: str, q: Any) -> Json:
        await self._prepare(org, ns)
        S.check_schedule_id(sid)
        s = self._load_schedule(org, ns, sid)

        def when(*fields: str) -> int | None:
            for f in fields:
                v = q.get(f)
                if v:
                    try:
                        return parse_time(v)
                    except ValueError as e:
                        raise I.bad(f"{f}: {e}") from None
            return None

        start = when("from", "start")
        if start is None:
            start = self.clock()
        end = when("to", "end")
        if end is None:
            end = start + 24 * 3600 * 1000
        if end < start:
            raise I.bad("to must not be before from")
        times = S.times_for(s["spec"]).between(start, end, 1000)
        return {"matchingTimes": [render.t(x) for x in times]}

    # ---- search attributes -----------------------------------------------------

    @routed
    async def add_search_attribute(self, org: str, ns: str, body: Json) -> Json:
        await self._prepare(org, ns)
        name = names.check_attr_name(body.get("name"))
        if name in RESERVED_ATTRS or name.startswith("Temporal"):
            raise I.bad(f"search attribute name {name} is reserved")
        typ = body.get("type")
        if typ not in ATTR_TYPES:
            raise I.bad(f"type must be one of {', '.join(ATTR_TYPES)}")
        await self.propose(org, ns, "sa.add", name=name, type=typ)
        return {"name": name, "type": typ}

    @routed
    async def remove_search_attribute(self, org: str, ns: str, name: str) -> Json:
        await self._prepare(org, ns)
        names.check_attr_name(name)
        await self.propose(org, ns, "sa.remove", name=name)
        return {"status": "removed"}

    @routed
    async def list_search_attributes(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self._prepare(org, ns)
        bound = f"{org}/{ns}"
        after = I.read_token(token, "attrs", bound)
        with self._read(org, ns) as txn:
            attrs = sorted(reads.search_attrs(txn, org, ns).items())
        if after is not None:
            attrs = [a for a in attrs if a[0].encode() > after]
        page = attrs[:size]
        more = len(attrs) > size
        return {
            "searchAttributes": [{"name": n, "type": t} for n, t in page],
            "nextPageToken": I.make_token("attrs", bound, page[-1][0].encode() if more else None),
        }


    # ---- batches (SPEC §4.7, §5.9) ---------------------------------------------

    @routed
    async def start_batch(self, org: str, ns: str, body: Json) -> Json:
        await self._prepare(org, ns, rate_limited=True)
        op = body.get("operation")
        if op == "BATCH_OPERATION_TYPE_RESET":
            raise I.bad("BATCH_OPERATION_TYPE_RESET is not supported")
        if op not in batches.OPERATIONS:
            raise I.bad(f"operation must be one of {', '.join(batches.OPERATIONS)}")
        query = body.get("query")
        if not isinstance(query, str):
            raise I.bad("query (the visibility query of the runs to act on) is required")
        self._compile(org, ns, query)  # a bad query is 400 now, not a failed batch
        signal = None
        if op == "BATCH_OPERATION_TYPE_SIGNAL":
            sig = body.get("signal")
            if not isinstance(sig, dict) or not isinstance(sig.get("name"), str) or not sig["name"]:
                raise I.bad("signal {name, input?} is required for BATCH_OPERATION_TYPE_SIGNAL")
            names.check_id(sig["name"], "signal name")
            signal = {"name": sig["name"], "input": I.payload(sig, "input", self.max_payload)}
        rps = body.get("rps", 50)
        if isinstance(rps, bool) or not isinstance(rps, int | float) or not 0 < rps <= 10_000:
            raise I.bad("rps must be a number above 0 and at most 10000")
        rid = I.request_id(body)
        # The id is the proposer's: from the requestId when there is one, so a
        # repeated start finds the batch it started (idempotent).
        bid = hashlib.sha256(f"{org}/{ns}/{rid}".encode()).hexdigest()[:32] if rid else secrets.token_hex(16)
        res = await self.propose(
            org, ns, "batch.start", batchId=bid, operation=op, query=query, signal=signal, rps=rps,
            reason=I.opt_str(body, "reason") or "", identity=I.opt_str(body, "identity") or "",
            max=self.cfg.limits.max_batch_size,
        )
        return render.batch(res["batch"])

    @routed
    async def describe_batch(self, org: str, ns: str, bid: str) -> Json:
        await self._prepare(org, ns)
        names.check_id(bid, "batch id")
        with self._read(org, ns) as txn:
            rec = reads.batch(txn, org, ns, bid)
        if rec is None:
            raise ApiError("not_found", f"batch {bid} not found")
        return render.batch(rec)

    @routed
    async def terminate_batch(self, org: str, ns: str, bid: str, body: Json) -> Json:
        await self._prepare(org, ns)
        names.check_id(bid, "batch id")
        res = await self.propose(org, ns, "batch.terminate", batchId=bid, reason=I.opt_str(body, "reason") or "",
                                 identity=I.opt_str(body, "identity") or "")
        return render.batch(res["batch"])

    @routed
    async def list_batches(self, org: str, ns: str, size: int, token: str | None) -> Json:
        """Newest first (startTime descending, then id)."""
        await self._prepare(org, ns)
        bound = f"{org}/{ns}"
        after = I.read_token(token, "batches", bound)
        with self._read(org, ns) as txn:
            recs = reads.all_batches(txn, org, ns)

        def order(r: Json) -> bytes:
            return f"{(1 << 63) - r['startTime']:020d}/{r['batchId']}".encode()

        recs = sorted((r for r in recs if after is None or order(r) > after), key=order)
        page, more = recs[:size], len(recs) > size
        return {"batches": [render.batch(r) for r in page],
                "nextPageToken": I.make_token("batches", bound, order(page[-1]) if more else None)}

    # ---- identities (SPEC §4.7, §5.13) -------------------------------------------

    @routed
    async def list_identities(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self._prepare(org, ns)
        with self._read(org, ns) as txn:
            page, nxt = I.name_page(lambda after, n: reads.identities(txn, org, ns, after, n), token,
                                    "identities", f"{org}/{ns}", size, lambda i: i["email"])
        return {"identities": [render.identity(i) for i in page], "nextPageToken": nxt}

    @routed
    async def grant_identity(self, org: str, ns: str, body: Json) -> Json:
        await self._prepare(org, ns)
        email = check_email(body.get("email"))
        role = body.get("role")
        if role not in ROLES:
            raise I.bad(f"role must be one of {', '.join(ROLES)}")
        res = await self.propose(org, ns, "id.put", email=email, role=role)
        return render.identity(res["identity"])

    @routed
    async def revoke_identity(self, org: str, ns: str, email: str) -> Json:
        await self._prepare(org, ns)
        await self.propose(org, ns, "id.delete", email=check_email(email))
        return {"status": "revoked"}

    async def role_in(self, org: str, ns: str, email: str | None, org_role: str) -> str:
        """The caller's role in a namespace: its Identity record there (matched
        by the token's email) replaces the org role (SPEC §5.13)."""
        if not email or not names.is_namespace(ns):
            return org_role
        key = (org, ns, email.lower())
        now = time.monotonic()
        cached = self._roles.get(key)
        if cached is None or cached[0] < now:
            # Looked up at most once a second per caller and namespace: a worker's
            # every completion must not cost a read (or an RPC) of its own; a grant
            # or revocation takes effect within that second.
            rec = await self.read(org, ns, "identity", email)
            role = rec["role"] if isinstance(rec, dict) and rec.get("role") in ROLES else None
            if len(self._roles) > 10_000:
                self._roles.clear()
            cached = self._roles[key] = (now + ROLE_CACHE_S, role)
        return cached[1] or org_role


ROLES = names.ROLES
ROLE_CACHE_S = 1.0


def check_email(value: Any) -> str:
    """An identity's email, lower-cased (tokens are matched the same way)."""
    if (not isinstance(value, str) or not 3 <= len(value.encode()) <= 254 or value.count("@") != 1
            or value.startswith("@") or value.endswith("@")
            or any(c.isspace() or ord(c) < 32 or c in "\x7f/" for c in value)):
        raise I.bad("invalid email")
    return value.lower()


RESERVED_ATTRS = frozenset(
    ("WorkflowId", "RunId", "WorkflowType", "TaskQueue", "ExecutionStatus", "StartTime",
     "CloseTime", "HistoryLength", "Attempt")
)
ATTR_TYPES = ("Keyword", "Text", "Int", "Double", "Bool", "Datetime", "KeywordList")


def _attr_type_ok(typ: str, v: Any) -> bool:
    if v is None:
        return True
    if typ in ("Keyword", "Text"):
        return isinstance(v, str)
    if typ == "Int":
        return isinstance(v, int) and not isinstance(v, bool)
    if typ == "Double":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if typ == "Bool":
        return isinstance(v, bool)
    if typ == "Datetime":
        if not isinstance(v, str):
            return False
        try:
            parse_time(v)
        except ValueError:
            return False
        return True
    if typ == "KeywordList":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    return False
