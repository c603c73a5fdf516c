"""Serving a namespace this node holds no replica of (ARCHITECTURE.md "Routing").

With ``replication_factor`` below the cluster size, a partition lives on some
nodes only, yet any node accepts any request. The service layer is where a
request meets its shard, so that is where it is forwarded: a service method
marked ``@routed`` runs here when this node holds the shard's partition, and
otherwise on a replica, over the peer port (``replication.rpc``), with the
same arguments; its answer or its ``ApiError`` comes back unchanged. HTTP and
ZAP thus never see the difference, and no transport repeats the routing.

Narrow reads that code outside the service needs (a dispatcher checking a
task token) go through ``Service.read``: one function of ``shard.reads``,
by name, run against a replica's store. Only that module's public functions
can be named, so a peer can ask for nothing else.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.replication import NotReplica
from hanzo_tasks.replication.rpc import PeerUnavailable, RemoteError
from hanzo_tasks.shard import reads

log = logging.getLogger("tasks.forwarding")

Json = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

ROUTED: dict[str, str] = {}
"""The service methods a peer may ask this node to run: method name -> the
attribute of the service that holds the concept (``start_workflow`` ->
``workflows``). Names are unique across concepts, so the wire carries the
method name alone."""


READS = frozenset(
    name for name, fn in vars(reads).items()
    if callable(fn) and not name.startswith("_") and getattr(fn, "__module__", "") == reads.__name__
)

CALL_TIMEOUT = 20.0
"""Bound of one forwarded call: a proposal (``raft.propose_timeout``) plus a fence
wait (``migration.fence_wait``) with room to spare; queries add their own timeout."""


def routed(fn: F) -> F:
    """Run ``fn(self, org, ns, ...)`` on a replica of the shard when this node is not one."""
    fn.__routed__ = True  # type: ignore[attr-defined]  # registered by Concept.__init_subclass__

    @functools.wraps(fn)
    async def wrapper(self: Concept, org: str, ns: str, *args: Any, **kwargs: Any) -> Any:
        if self.svc.holds(org, ns):
            return await run_here(self, fn, org, ns, args, kwargs)
        return await self.svc.forward(fn.__name__, org, ns, list(args), kwargs)

    return wrapper  # type: ignore[return-value]


class Concept:
    """One concept of the service (namespaces, workflows, …): its operations, over
    the node's shared plumbing ``svc`` (proposals, reads, barriers, forwarding).

    Each subclass names the service attribute it lives under (``attr``); its
    ``@routed`` methods are registered so that a peer can run them here."""

    attr: str = ""

    def __init__(self, svc: Any) -> None:
        self.svc = svc

    def __init_subclass__(cls, **kw: Any) -> None:
        super().__init_subclass__(**kw)
        for name, fn in vars(cls).items():
            if getattr(getattr(fn, "__wrapped__", None), "__routed__", False):
                if ROUTED.get(name, cls.attr) != cls.attr:
                    raise TypeError(f"routed method {name} is defined by two concepts")
                ROUTED[name] = cls.attr


async def run_here(concept: Concept, fn: Callable[..., Awaitable[Any]], org: str, ns: str,
                   args: Any, kwargs: Json) -> Any:
    """Run a routed method on this replica. A "not found" may come from this
    replica lagging behind a write acknowledged through another node (a
    namespace or run created a moment ago), or from a pin this node has not
    seen yet (the shard moved): it is only believed after a barrier (which
    follows the pin), and the call is run once more, here or where the shard
    now lives. Safe for writes too: a command rejected as not found changed
    nothing."""
    service = concept.svc
    try:
        return await fn(concept, org, ns, *args, **kwargs)
    except ApiError as e:
        if e.code != "not_found" or not service.replicator.clustered:
            raise
    await service.read_barrier(org, ns)  # catches up, and follows a shard a migration moved
    if not service.holds(org, ns):
        return await service.forward(fn.__name__, org, ns, list(args), kwargs)
    return await fn(concept, org, ns, *args, **kwargs)


def pack_error(e: ApiError) -> Json:
    return {"err": [e.code, e.message, e.details, e.retry_after]}


def unpack(answer: Any) -> Any:
    if isinstance(answer, dict) and "err" in answer:
        code, message, details, retry_after = answer["err"]
        raise ApiError(code, message, details, retry_after)
    return answer.get("ok") if isinstance(answer, dict) else None


class Forwarder:
    """Both ends of forwarding for one node's service."""

    def __init__(self, service: Any, rpc: Any) -> None:
        self.service = service
        self.rpc = rpc
        self.forwarded = 0
        self.served = 0
        rpc.register("svc", self._serve_call)
        rpc.register("read", self._serve_read)
        rpc.register("nsnames", self._serve_names)

    # ---- the asking side -------------------------------------------------------

    async def call(self, group: int, method: str, args: Any, timeout: float = CALL_TIMEOUT) -> Any:
        """Ask a replica of ``group``; peers that cannot be reached are skipped."""
        last_full: Json | None = None
        for peer in self.service.replicator.peers_for(group):
            try:
                answer = await self.rpc.call(peer, method, args, timeout)
            except PeerUnavailable:
                continue
            except TimeoutError:
                raise ApiError("unavailable", f"replica {peer} did not answer in time; retry",
                               retry_after=1) from None
            except RemoteError as e:
                raise ApiError("unavailable", f"replica {peer} failed: {e}", retry_after=1) from None
            if isinstance(answer, dict) and answer.get("not_replica"):
                continue  # its layout changed under us: ask the next one
            if isinstance(answer, dict) and answer.get("leader"):
                self.service.replicator.note_leader(group, answer["leader"])
            if isinstance(answer, dict) and (answer.get("err") or [None])[0] == "storage_full":
                last_full = answer
                continue  # that replica's disk refused it before proposing: another may take it
            self.forwarded += 1
            return unpack(answer)
        if last_full is not None:
            return unpack(last_full)
        raise ApiError("unavailable", f"no replica of partition {group} is reachable", retry_after=1)

    # ---- the serving side ------------------------------------------------------

    async def _serve_call(self, peer: str, a: Any) -> Any:
        name, org, ns = a["m"], a["org"], a["ns"]
        if name not in ROUTED:
            raise ValueError(f"{name!r} cannot be called by a peer")
        if not self.service.holds(org, ns):
            return {"not_replica": True}
        concept = getattr(self.service, ROUTED[name])
        fn = getattr(type(concept), name).__wrapped__
        self.served += 1
        leader = self.service.replicator.leader(self.service.partition(org, ns))
        try:
            if a.get("barrier"):
                await self.service.read_barrier(org, ns)
            out = {"ok": await run_here(concept, fn, org, ns, a.get("args", ()), a.get("kwargs", {}))}
        except ApiError as e:
            out = pack_error(e)
        except NotReplica:
            return {"not_replica": True}
        out["leader"] = leader
        return out

    async def _serve_read(self, peer: str, a: Any) -> Any:
        fn, org, ns = a["fn"], a["org"], a["ns"]
        if fn not in READS:
            raise ValueError(f"{fn!r} is not a read")
        if not self.service.holds(org, ns):
            return {"not_replica": True}
        if a.get("barrier"):
            await self.service.read_barrier(org, ns)
        try:
            with self.service.read_txn(org, ns) as txn:
                return {"ok": getattr(reads, fn)(txn, org, ns, *a.get("args", ()))}
        except NotReplica:
            return {"not_replica": True}

    async def _serve_names(self, peer: str, a: Any) -> Any:
        rep = self.service.replicator
        group = a["p"]
        if not rep.is_local(group):
            return {"not_replica": True}
        with rep.store(group).read() as txn:
            return {"ok": reads.namespace_names(txn, a["org"])}
