"""Where the data lives: partition replica sets and namespace placement.

With ``--replication-factor R`` below the node count ``N``, each partition
is replicated by R of the N nodes (chosen at bootstrap, recorded in the meta
group); a node that holds no replica of a partition has no
``partitions/<p>`` directory and forwards requests for it to a replica. Any
fault or check that means "the nodes that hold partition p" must therefore
ask the cluster (``GET /v1/tasks/cluster``: ``partitions[].replicas``,
``namespaces[].partition``) instead of assuming every node holds everything.

Pure functions of that answer (no I/O), unit-tested in
``tests/chaos/test_layout.py``; ``Testbed.layout`` fetches it.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Layout:
    """The replica sets (partition -> node ids) and namespace -> partition, as one node reported them."""

    replicas: dict[int, tuple[str, ...]]
    namespaces: dict[str, int] = field(default_factory=dict)
    #: ``replicationFactor`` as the cluster reports it (``min(R, N)``), when it does.
    replication_factor: int | None = None

    @classmethod
    def from_cluster(cls, body: Any, node_ids: Iterable[str] = ()) -> Layout | None:
        """From a ``GET /v1/tasks/cluster`` body; None when it has no partitions.

        A partition without a ``replicas`` list (a server from before replica
        sets) is held by every node in ``node_ids``.
        """
        if not isinstance(body, dict) or not body.get("partitions"):
            return None
        everyone = tuple(sorted(node_ids))
        replicas: dict[int, tuple[str, ...]] = {}
        for p in body["partitions"]:
            if not isinstance(p, dict) or not isinstance(p.get("id"), int):
                continue
            rs = p.get("replicas")
            replicas[p["id"]] = tuple(sorted(rs)) if isinstance(rs, list) and rs else everyone
        namespaces = {
            item["namespace"]: item["partition"]
            for item in body.get("namespaces") or []
            if isinstance(item, dict) and isinstance(item.get("namespace"), str)
            and isinstance(item.get("partition"), int)
        }
        rf = body.get("replicationFactor")
        return cls(replicas, namespaces, rf if isinstance(rf, int) else None)

    def partitions_of(self, node: str) -> list[int]:
        """The partitions ``node`` holds a replica of."""
        return sorted(p for p, rs in self.replicas.items() if node in rs)

    def holders(self, ns: str) -> list[str] | None:
        """The nodes holding the partition namespace ``ns`` lives in (None: unknown namespace)."""
        p = self.namespaces.get(ns)
        if p is None or p not in self.replicas:
            return None
        return list(self.replicas[p])

    def full(self, node_ids: Iterable[str]) -> bool:
        """Every node holds every partition (R >= N)."""
        everyone = set(node_ids)
        return all(set(rs) == everyone for rs in self.replicas.values())

    def to_json(self) -> dict[str, Any]:
        return {"replication_factor": self.replication_factor,
                "replicas": {str(p): list(rs) for p, rs in sorted(self.replicas.items())},
                "namespaces": dict(sorted(self.namespaces.items()))}


def choose_destination(replicas: dict[int, tuple[str, ...]] | dict[int, list[str]], src: int,
                       rnd: random.Random) -> int | None:
    """A destination partition for a namespace migrating out of ``src``.

    Prefers the partitions whose replica set brings the data to the most
    machines that do not hold it yet (so a migration really moves bytes
    between nodes when R < N), ties broken by ``rnd``; when every other
    partition has the source's replica set (R >= N), any other partition.
    None when there is no other partition.
    """
    others = sorted(p for p in replicas if p != src)
    if not others:
        return None
    have = set(replicas.get(src, ()))
    gain = {p: len(set(replicas[p]) - have) for p in others}
    best = max(gain.values())
    return rnd.choice([p for p in others if gain[p] == best])


def most_loaded(replicas: dict[int, list[str]] | dict[int, tuple[str, ...]], node_ids: Iterable[str]) -> list[str]:
    """The nodes holding the most partition replicas (sorted; every node when all hold as many)."""
    ids = sorted(node_ids)
    count = {n: sum(1 for rs in replicas.values() if n in rs) for n in ids}
    top = max(count.values(), default=0)
    return [n for n in ids if count[n] == top]


def holders_by_namespace(layout: Layout | None, namespaces: Iterable[str],
                         node_ids: Iterable[str]) -> dict[str, list[str]]:
    """Namespace -> the nodes whose own replica must hold it (every node when unknown)."""
    ids = sorted(node_ids)
    out: dict[str, list[str]] = {}
    for ns in namespaces:
        held = layout.holders(ns) if layout is not None else None
        out[ns] = (sorted(n for n in held if n in ids) if held else []) or list(ids)
    return out
