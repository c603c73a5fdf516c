"""The testbed of one run: node processes, their peer proxies, and cluster views.

It knows how to start the cluster, wait for it, find leaders, wait for the
replicas to converge and stop it cleanly. Faults act on it; the workload
only talks to its HTTP URLs. Every wait is bounded: a node that does not come
back is reported, never waited for forever.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.api import Api
from chaos.layout import Layout
from chaos.nodes import NodeOptions, NodeProcess, build_nodes, kill_all
from chaos.ports import pick_ports, release
from chaos.proxy import ProxyHub
from chaos.workload import Target


@dataclass
class ClusterView:
    """What one node says about the cluster (``GET /v1/tasks/cluster``)."""

    node_id: str
    meta_leader: str | None
    leaders: dict[int, str | None]
    terms: dict[int, int]
    applied: dict[int, int]
    commit: dict[int, int]
    #: Partition -> its replica set, as this node reports it (every node when the server does not say).
    replicas: dict[int, tuple[str, ...]] = field(default_factory=dict)
    #: The partitions this node holds a replica of (the only ones whose term,
    #: applied and commit indexes it reports: ``applied``/``commit`` have no others).
    local: frozenset[int] = frozenset()


class Testbed:
    __test__ = False  # not a pytest test class, despite its name
    def __init__(self, root: Path, n: int, *, partitions: int, raft_args: list[str] | None = None,
                 replication_factor: int = 3) -> None:
        self.root = root
        self.n = n
        self.partitions = partitions
        #: ``--replication-factor`` of every node; below ``n``, each partition lives on some nodes only.
        self.replication_factor = replication_factor
        root.mkdir(parents=True, exist_ok=True)
        self.ports = pick_ports(4 * n)
        self.nodes: list[NodeProcess] = build_nodes(root, self.ports, n, partitions=partitions,
                                                    raft_args=raft_args, replication_factor=replication_factor)
        self.by_id = {node.node_id: node for node in self.nodes}
        self.hub = ProxyHub()
        self.api = Api()
        #: Per node, the options of its healthy configuration (faults restore these).
        self.normal: dict[str, NodeOptions] = {node.node_id: NodeOptions() for node in self.nodes}

    @property
    def ids(self) -> list[str]:
        return [node.node_id for node in self.nodes]

    @property
    def full_replication(self) -> bool:
        """Every node holds every partition (R >= N): the behaviour of a run before replica sets."""
        return self.replication_factor >= self.n

    def targets(self) -> list[Target]:
        return [Target(node.node_id, node.spec.http_url) for node in self.nodes]

    # ------------------------------------------------------------ lifecycle

    async def start(self, options: dict[str, NodeOptions] | None = None, ready_timeout: float = 90.0) -> None:
        self.hub.start()
        for node in self.nodes:
            self.hub.add_target(node.node_id, node.spec.proxy_port, node.spec.peer_port)
        await self.api.open()
        for node in self.nodes:
            node.start((options or {}).get(node.node_id, self.normal[node.node_id]))
        missing = await self.wait_ready(ready_timeout)
        if missing:
            tails = "\n".join(f"--- {nid} ---\n{self.by_id[nid].log_tail(1500)}" for nid in missing)
            raise RuntimeError(f"nodes not ready after {ready_timeout:.0f}s: {missing}\n{tails}")

    async def close(self) -> None:
        """Kill whatever still runs and free the ports (the ``finally`` path)."""
        await asyncio.to_thread(kill_all, self.nodes)
        await self.api.close()
        await asyncio.to_thread(self.hub.stop)
        release(self.ports)

    async def restart(self, node: NodeProcess, options: NodeOptions | None = None) -> None:
        """Start a stopped node with ``options`` (its normal ones by default)."""
        if node.running:
            await asyncio.to_thread(node.kill)
        node.start(options or self.normal[node.node_id])

    # ------------------------------------------------------------ views

    async def ready(self, node: NodeProcess) -> bool:
        if not node.running or node.paused:
            return False
        rep = await self.api.get(node.spec.http_url, "/readyz", timeout=3.0)
        return rep.status == 200

    def reap(self) -> list[str]:
        """Nodes whose process ended without the harness stopping it (recorded on the node)."""
        return [n.node_id for n in self.nodes if n.reap()]

    def crashes(self) -> dict[str, list[dict[str, Any]]]:
        return {n.node_id: list(n.crashes) for n in self.nodes if n.crashes}

    async def wait_ready(self, timeout: float, nodes: list[NodeProcess] | None = None,
                         max_restarts: int = 3) -> list[str]:
        """Wait until every given node answers /readyz 200; returns those that never did.

        Every node is expected to run here; one whose process exited on its
        own is restarted (with the options of its last start), at most
        ``max_restarts`` times per call, and its exit stays recorded.
        """
        pending = list(nodes or self.nodes)
        deadline = time.monotonic() + timeout
        restarts = 0
        while pending and time.monotonic() < deadline:
            self.reap()
            for n in pending:
                if n.proc is None and restarts < max_restarts:
                    restarts += 1
                    await asyncio.sleep(1.0)
                    n.start(n.options)
            checks = await asyncio.gather(*(self.ready(n) for n in pending))
            pending = [n for n, ok in zip(pending, checks, strict=True) if not ok]
            if pending:
                await asyncio.sleep(0.25)
        return [n.node_id for n in pending]

    async def view(self, node: NodeProcess, timeout: float = 3.0) -> ClusterView | None:
        if not node.running or node.paused:
            return None
        rep = await self.api.get(node.spec.http_url, "/v1/tasks/cluster?pageSize=1", timeout=timeout)
        if not rep.ok or not isinstance(rep.body, dict):
            return None
        b = rep.body
        parts = b.get("partitions") or []
        # A server without replica sets says neither "local" nor "replicas": every partition is local.
        local = [p for p in parts if p.get("local", True)]
        everyone = tuple(sorted(self.ids))
        return ClusterView(
            node_id=node.node_id,
            meta_leader=b.get("metaLeader"),
            leaders={p["id"]: p.get("leader") for p in parts},
            terms={p["id"]: p.get("term") or 0 for p in parts},
            applied={p["id"]: p.get("appliedIndex") or 0 for p in local},
            commit={p["id"]: p.get("commitIndex") or 0 for p in local},
            replicas={p["id"]: tuple(sorted(p.get("replicas") or everyone)) for p in parts},
            local=frozenset(p["id"] for p in local),
        )

    async def views(self) -> list[ClusterView]:
        got = await asyncio.gather(*(self.view(n) for n in self.nodes))
        return [v for v in got if v is not None]

    async def leaders(self) -> tuple[str | None, dict[int, str]]:
        """(meta leader, partition -> leader), each from the view with the newest term.

        A partition's leader is taken from its replicas' views (they know the
        term); a node that holds no replica of it only relays what a replica
        told it, so it is believed only when no replica answered.
        """
        views = await self.views()
        metas = Counter(v.meta_leader for v in views if v.meta_leader)
        meta = metas.most_common(1)[0][0] if metas else None
        out: dict[int, str] = {}
        for p in range(self.partitions):
            with_leader = [v for v in views if v.leaders.get(p)]
            pool = [v for v in with_leader if p in v.local] or with_leader
            best = max(pool, key=lambda v: v.terms.get(p, 0), default=None)
            if best is not None:
                out[p] = best.leaders[p]  # type: ignore[assignment]
        return meta, out

    async def layout(self) -> Layout | None:
        """Replica sets and namespace placement, from the first node that answers (None: none did)."""
        for node in self.nodes:
            if not node.running or node.paused:
                continue
            rep = await self.api.get(node.spec.http_url, "/v1/tasks/cluster?pageSize=1000", timeout=3.0)
            if rep.ok:
                got = Layout.from_cluster(rep.body, self.ids)
                if got is not None:
                    return got
        return None

    async def partition_of_namespace(self, ns: str) -> int | None:
        """The partition a namespace lives in now (pins from migrations included)."""
        for node in self.nodes:
            if not node.running or node.paused:
                continue
            rep = await self.api.get(node.spec.http_url, "/v1/tasks/cluster?pageSize=1000", timeout=3.0)
            if rep.ok and isinstance(rep.body, dict):
                for item in rep.body.get("namespaces") or []:
                    if item.get("namespace") == ns:
                        return item.get("partition")
        return None

    async def busiest_leader(self, rnd: Any) -> str:
        """The node leading the most partitions (ties broken by the run's rng)."""
        _, leaders = await self.leaders()
        counts = Counter(leaders.values())
        if not counts:
            return rnd.choice(self.ids)
        top = max(counts.values())
        return rnd.choice(sorted(nid for nid, c in counts.items() if c == top))

    async def meta_leader(self, rnd: Any) -> str:
        meta, _ = await self.leaders()
        return meta if meta in self.by_id else rnd.choice(self.ids)

    async def health(self, node: NodeProcess) -> dict[str, Any] | None:
        if not node.running or node.paused:
            return None
        rep = await self.api.get(node.spec.http_url, "/v1/tasks/cluster/health", timeout=3.0)
        return rep.body if isinstance(rep.body, dict) else None

    # ------------------------------------------------------------ convergence

    async def wait_converged(self, timeout: float, settle: float = 1.0) -> dict[str, Any]:
        """Wait until every replica of every partition reports the same applied
        index equal to its commit index, twice in a row ``settle`` s apart
        (every node must answer; with R < N a node speaks only for the
        partitions it holds, and each partition's replica set must all be there).

        Returns what was seen last (``converged`` says whether it held).
        """
        deadline = time.monotonic() + timeout
        last: dict[str, Any] = {}
        previous: dict[str, dict[int, int]] | None = None
        while time.monotonic() < deadline:
            views = await self.views()
            applied = {v.node_id: v.applied for v in views}
            same = len(views) == len(self.nodes) and all(_partition_converged(views, p)
                                                         for p in range(self.partitions))
            last = {"converged": False, "applied": applied,
                    "commit": {v.node_id: v.commit for v in views if v.commit != v.applied}}
            if same and previous == applied:
                last["converged"] = True
                return last
            previous = applied if same else None
            await asyncio.sleep(settle)
        return last

    async def stop_clean(self, timeout: float = 40.0) -> dict[str, int | None]:
        """SIGTERM every node at once and wait (each is SIGKILLed after ``timeout``)."""
        codes = await asyncio.gather(*(asyncio.to_thread(n.terminate, timeout) for n in self.nodes))
        return {n.node_id: rc for n, rc in zip(self.nodes, codes, strict=True)}


def _partition_converged(views: list[ClusterView], p: int) -> bool:
    """Every replica of ``p`` answered, with one applied index equal to its commit index."""
    holding = [v for v in views if p in v.local]
    expected = set().union(*(v.replicas.get(p, ()) for v in views)) if views else set()
    if not holding or not expected <= {v.node_id for v in holding}:
        return False
    return len({v.applied.get(p) for v in holding}) == 1 and all(v.applied.get(p) == v.commit.get(p)
                                                                   for v in holding)
