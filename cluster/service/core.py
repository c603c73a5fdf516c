"""The service's shared plumbing, under every concept (namespaces, workflows, …).

It stamps the non-deterministic parts of a command (the time, the randomness
that run ids are drawn from), proposes the command to the shard's partition
through the Replicator and unwraps the result into a record or an
``ApiError``; it opens reads on the local replica or asks a peer's; it takes
read barriers and forwards a call to a replica when this node holds none.

Transports (HTTP, ZAP, MCP, SSE) only parse their own framing and field
names; the rules live in the concept modules beside this one, once.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgpack
from hanzo_tasks.cluster.service.forwarding import CALL_TIMEOUT, Forwarder
from hanzo_tasks.cluster.service.ratelimit import TokenBuckets
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.replication import NodeReplicator, NotLeader, NotReplica, ReadIndexUnavailable
from hanzo_tasks.routing import partition_of
from hanzo_tasks.shard import encode, moving, reads

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




class ServiceCore:
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
        self.buckets = TokenBuckets()
        self.proposal_errors = 0
        self.read_index = bool(cfg.raft.read_index)
        self.read_barriers = 0  # read points that needed a barrier entry (ReadIndex unavailable or off)
        self.on_proposed: Callable[[float], None] | None = None
        self.query_handler: Any = None  # set by the node's dispatcher
        self.fence_wait = cfg.migration.fence_wait / 1000.0
        # (org, ns) -> {partition, epoch}: shards a migration moved off their HRW partition.
        # Subscribed before the meta group's pins are read, so that no pin applied
        # in between is missed; one seen twice is merged by its epoch (_follow_pin).
        self.pins: dict[tuple[str, str], Json] = {}
        replicator.subscribe(self._on_apply)
        self._load_pins()  # a single node keeps none
        self.forwarder: Forwarder | None = Forwarder(self, replicator.rpc) if replicator.clustered else None

    # ---- plumbing ----------------------------------------------------------

    def partition(self, org: str, ns: str) -> int:
        """The shard's partition: its pin when a migration moved it, else its HRW choice.

        Called several times per request, so it costs two lookups: the pin (a
        dict, changed only by ``_follow_pin``, so a flip is followed at once)
        and the HRW partition, which ``partition_of`` computes once per shard.
        """
        pin = self.pins.get((org, ns))
        if pin is not None:
            return pin["partition"]
        return partition_of(org, ns, self.cfg.seed, self.replicator.partitions)

    def holds(self, org: str, ns: str) -> bool:
        """Whether this node holds a replica of the shard's partition (else requests are forwarded).

        Asked of the replicator each time: its replica sets follow membership.
        """
        return self.replicator.is_local(self.partition(org, ns))

    async def forward(self, method: str, org: str, ns: str, args: list[Any], kwargs: Json) -> Any:
        """Run a ``@routed`` method on a replica of the shard (see cluster.forwarding)."""
        if self.forwarder is None:
            raise ApiError("unavailable", "no replica of this namespace's partition here", retry_after=1)
        barrier = _barrier_due.get()
        _barrier_due.set(False)
        timeout = CALL_TIMEOUT + (self.cfg.timeouts.query_max / 1000.0 if method == "query_metadata" else 0.0)
        if method == "workflow_result":  # a long poll: the replica may wait this long before answering
            timeout += max(0, int(kwargs.get("wait_ms") or 0)) / 1000.0
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
            with self.read_txn(org, ns) as txn:
                return getattr(reads, fn)(txn, org, ns, *args)
        if self.forwarder is None:
            raise ApiError("unavailable", "no replica of this namespace's partition here", retry_after=1)
        return await self.forwarder.call(self.partition(org, ns), "read",
                                         {"fn": fn, "org": org, "ns": ns, "args": list(args), "barrier": barrier})

    def _follow_pin(self, org: str, ns: str, partition: int, epoch: int) -> None:
        """Route the shard to ``partition`` unless a newer pin is known already.

        Placement epochs only grow, so a pin seen twice (read from the meta
        store and notified by its apply) or late can never move a shard back.
        """
        known = self.pins.get((org, ns))
        if known is None or known["epoch"] < epoch:
            self.pins[(org, ns)] = {"partition": partition, "epoch": epoch}

    def _load_pins(self) -> None:
        """Take every pin the meta store holds: at start, and after a meta barrier
        (a replica that caught up from a snapshot image applied no pin entries)."""
        for (org, ns), pin in self.replicator.meta.pins().items():
            self._follow_pin(org, ns, pin["partition"], pin["epoch"])

    def _on_apply(self, group: int, index: int, result: Json) -> None:
        pin = result.get("pin")
        if pin is not None:  # a migration flipped: route the shard to its new partition
            org, ns, part, epoch = pin
            self._follow_pin(org, ns, part, epoch)
        for ev in result.get("_events", ()):
            if ev["kind"].startswith("namespace."):
                self._ns_cache.pop((ev["org"], ev["namespace"]), None)

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
            code: str = res.get("code", "internal")
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
            await self._read_point(group, org, ns)
            with self.replicator.store(group).read() as txn:  # the partition barriered, whatever pins say now
                st = moving.read_state(txn, org, ns)
            if st is not None and (st["role"] == "moved" or (st["role"] == "src" and st.get("fenced"))):
                await self.meta_barrier()
            if self.partition(org, ns) == group:
                return  # not flipped (or not yet: the fenced source is still the authoritative copy)
            # The pin moved while we waited: barrier where the shard lives now.
        raise ApiError("unavailable", f"namespace {ns} kept moving while it was read; retry", retry_after=1)

    async def _read_point(self, group: int, org: str, ns: str) -> None:
        """This replica of ``group`` reflects every write acknowledged before now.

        ReadIndex (a heartbeat round confirms the leader, no log entry) where it
        can be had; a barrier entry where it cannot (a leader that has not yet
        committed in its term, no leader known) or when ``raft.read_index`` is off.
        """
        if self.read_index:
            try:
                await self.replicator.read_index(group)
                return
            except ReadIndexUnavailable as e:
                log.debug("read point of partition %d by a barrier: %s", group, e)
            except NotReplica:
                pass  # the layout moved under us: the barrier's proposal is forwarded
            except NotLeader as e:
                self.proposal_errors += 1
                raise ApiError("unavailable", f"shard unavailable: {e}", retry_after=1) from None
        self.read_barriers += 1
        await self._barrier_on(group, org, ns)

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
            code: str = res.get("code", "unavailable")
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
        self._load_pins()

    def read_txn(self, org: str, ns: str):
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
            with self.read_txn(org, ns) as txn:
                rec = reads.namespace(txn, org, ns)
            if rec is None:
                raise ApiError("not_found", f"namespace {ns} not found")
            self._ns_cache[(org, ns)] = rec
        return rec

    async def prepare(self, org: str, ns: str, *, rate_limited: bool = False) -> Json:
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
