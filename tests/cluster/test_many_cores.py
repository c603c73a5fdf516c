"""Many cores: several nodes per machine, replicas never sharing a machine.

A node is one Python process and uses about one core, so a machine with many
cores runs several nodes, each with ``--node-zone <machine>`` (docs/many-cores.md).
Six real ``tasksd`` processes play two nodes on each of three machines,
replication factor 3. Their static peer list says nothing about machines, so
the bootstrap layout puts two replicas of some partitions on one machine; the
meta leader's keeper then moves replicas until every partition has one on
each machine. Killing both nodes of one machine at once (SIGKILL) then loses
no acknowledged write, and every partition keeps (or elects) a leader and
takes writes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.routing import partition_of

from tests.cluster.raft_support import Cluster
from tests.migration.test_migration import NSP, call, create_ns, start_wf

P = 6
IDS = [f"n{i}" for i in range(1, 7)]
# Dealt round-robin, so that neither ids nor the static peer order tell machines apart.
ZONES = {nid: f"machine-{'abc'[i % 3]}" for i, nid in enumerate(IDS)}
LOST = "machine-a"


def cluster_info(c: Cluster, skip: set[str] = frozenset()) -> dict[str, Any] | None:
    for nid, node in c.nodes.items():
        if nid in skip or node.proc is None:
            continue
        status, body = node.get("/v1/tasks/cluster")
        if status == 200:
            return body
    return None


def wait_for(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last and last[0]:
            return last[1]
        time.sleep(0.25)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s; last seen: {last and last[1]}")


def spans_every_machine(c: Cluster) -> tuple[bool, Any]:
    info = cluster_info(c)
    if info is None:
        return False, None
    sets = {p["id"]: p["replicas"] for p in info["partitions"]}
    machines = {p: sorted(ZONES[n] for n in nodes) for p, nodes in sets.items()}
    whole = len(sets) == P and all(m == ["machine-a", "machine-b", "machine-c"] for m in machines.values())
    return whole, machines


def namespaces_covering_every_partition() -> list[str]:
    """One namespace per partition (the HRW placement every node computes)."""
    found: dict[int, str] = {}
    i = 0
    while len(found) < P:
        ns = f"cores-{i}"
        found.setdefault(partition_of("_", ns, "tasks", P), ns)
        i += 1
    return [found[p] for p in range(P)]


@pytest.fixture
def machines(tmp_path: Path):
    c = Cluster(tmp_path / "c", n=6, partitions=P, extra=["--replication-factor", "3"])
    for nid, node in c.nodes.items():
        node.args += ["--node-zone", ZONES[nid]]
    c.start(timeout=90.0)
    try:
        yield c
    finally:
        c.kill_all()


def test_replicas_span_the_machines_and_losing_one_machine_loses_nothing(machines: Cluster) -> None:
    c = machines
    started = time.monotonic()
    layout = wait_for("every partition on three machines", lambda: spans_every_machine(c), 60.0)
    spread_after = time.monotonic() - started

    namespaces = namespaces_covering_every_partition()
    acked: list[tuple[str, str]] = []
    for j, ns in enumerate(namespaces):
        create_ns(c.nodes[IDS[j % 6]], ns)
        for k in range(3):
            wid = f"before-{k}"
            start_wf(c.nodes[IDS[(j + k) % 6]], ns, wid)  # asserts the 200: acknowledged
            acked.append((ns, wid))

    lost = {nid for nid, zone in ZONES.items() if zone == LOST}
    for nid in sorted(lost):
        c.nodes[nid].kill()  # SIGKILL: the whole machine goes at once
    killed_at = time.monotonic()

    def every_partition_led() -> tuple[bool, Any]:
        info = cluster_info(c, lost)
        if info is None:
            return False, None
        leaders = {p["id"]: p["leader"] for p in info["partitions"]}
        leaders["meta"] = info["metaLeader"]  # the directory: 5 voters, at most 2 per machine
        return all(leaders.get(g) and leaders[g] not in lost for g in [*range(P), "meta"]), leaders

    wait_for("a live leader for every partition and the meta group", every_partition_led, 30.0)
    failover = time.monotonic() - killed_at

    survivors = [nid for nid in IDS if nid not in lost]
    for i, (ns, wid) in enumerate(acked):
        status, body = call(c.nodes[survivors[i % len(survivors)]], "GET", f"{NSP}/{ns}/workflows/{wid}")
        assert status == 200, (ns, wid, status, body)
    for j, ns in enumerate(namespaces):  # every partition still takes writes
        start_wf(c.nodes[survivors[j % len(survivors)]], ns, "after-the-loss")

    print(f"\nlayout spanned the machines {spread_after:.1f} s after ready: {layout}; "
          f"a leader everywhere {failover:.1f} s after losing {LOST}")
