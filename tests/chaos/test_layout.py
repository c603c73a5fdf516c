"""Replica sets below the node count (``--replication-factor R < --nodes N``):
the pure helpers that turn ``GET /v1/tasks/cluster`` into choices and checks.
No process is started."""

from __future__ import annotations

import random
from pathlib import Path

import lmdb

from chaos.checker import check_acknowledged_starts
from chaos.collect import merged_runs
from chaos.hashes import replica_digests
from chaos.history import Op
from chaos.layout import Layout, choose_destination, holders_by_namespace, most_loaded
from chaos.scenarios import _filled, _tiny_map_victim
from chaos.testbed import ClusterView, _partition_converged

IDS = ["n1", "n2", "n3", "n4"]
#: Four nodes, replication factor 3 (the shape ``bootstrap_layout`` gives).
SETS = {0: ["n1", "n2", "n3"], 1: ["n2", "n3", "n4"], 2: ["n1", "n3", "n4"], 3: ["n1", "n2", "n4"]}


def cluster_body(sets: dict[int, list[str]] = SETS, **ns: int) -> dict:
    return {
        "replicationFactor": 3,
        "partitions": [{"id": p, "leader": rs[0], "replicas": rs, "local": "n1" in rs} for p, rs in sets.items()],
        "namespaces": [{"org": "", "namespace": name, "partition": p} for name, p in ns.items()],
        "metaLeader": "n1",
    }


def test_layout_from_the_cluster_answer() -> None:
    lay = Layout.from_cluster(cluster_body(a=1, b=0), IDS)
    assert lay is not None
    assert lay.replicas[1] == ("n2", "n3", "n4")
    assert lay.namespaces == {"a": 1, "b": 0}
    assert lay.replication_factor == 3
    assert lay.partitions_of("n1") == [0, 2, 3]
    assert lay.holders("a") == ["n2", "n3", "n4"]
    assert lay.holders("unknown") is None
    assert not lay.full(IDS)
    assert Layout.from_cluster({"partitions": []}, IDS) is None
    assert Layout.from_cluster(None, IDS) is None


def test_a_server_without_replica_sets_means_every_node_holds_everything() -> None:
    lay = Layout.from_cluster({"partitions": [{"id": 0, "leader": "n1"}, {"id": 1, "leader": "n2"}]}, IDS[:3])
    assert lay is not None and lay.full(IDS[:3])
    assert lay.partitions_of("n3") == [0, 1]


def test_destination_moves_the_data_to_another_machine() -> None:
    for seed in range(20):
        for src, have in SETS.items():
            dst = choose_destination(SETS, src, random.Random(seed))
            assert dst is not None and dst != src
            assert set(SETS[dst]) - set(have), (src, dst)


def test_destination_prefers_the_set_that_differs_most() -> None:
    sets = {0: ["n1", "n2", "n3"], 1: ["n1", "n2", "n3"], 2: ["n1", "n2", "n4"], 3: ["n4", "n5", "n6"]}
    assert {choose_destination(sets, 0, random.Random(s)) for s in range(20)} == {3}
    sets.pop(3)
    assert {choose_destination(sets, 0, random.Random(s)) for s in range(20)} == {2}


def test_destination_with_full_replication_is_any_other_partition() -> None:
    full = {p: IDS for p in range(4)}
    assert {choose_destination(full, 2, random.Random(s)) for s in range(50)} == {0, 1, 3}
    assert choose_destination({0: IDS}, 0, random.Random(1)) is None


def test_most_loaded_and_the_disk_full_victim() -> None:
    sets = {0: ["n1", "n2", "n3"], 1: ["n1", "n2", "n4"]}
    assert most_loaded(sets, IDS) == ["n1", "n2"]
    assert most_loaded(SETS, IDS) == IDS
    for s in range(10):
        victim = _tiny_map_victim(IDS, random.Random(s), sets)
        assert list(victim) in (["n1"], ["n2"])
    # Without a layout (R >= N): the choice made before replica sets existed.
    assert _tiny_map_victim(IDS, random.Random(3), None).keys() == {random.Random(3).choice(IDS)}


def test_holders_by_namespace() -> None:
    lay = Layout.from_cluster(cluster_body(a=1, b=0), IDS)
    got = holders_by_namespace(lay, ["a", "b", "c"], IDS)
    assert got == {"a": ["n2", "n3", "n4"], "b": ["n1", "n2", "n3"], "c": IDS}
    assert holders_by_namespace(None, ["a"], IDS) == {"a": IDS}


def test_merged_runs_take_each_namespace_from_a_holder() -> None:
    rbn = {
        "n1": {("b", "job-1"): ["r1"]},
        "n2": {("a", "job-2"): ["r2"], ("b", "job-1"): ["r1"]},
    }
    holders = {"a": ["n2", "n3", "n4"], "b": ["n1", "n2", "n3"]}
    assert merged_runs(rbn, "n1", holders) == {("b", "job-1"): ["r1"], ("a", "job-2"): ["r2"]}
    assert merged_runs(rbn, "n1", None) == rbn["n1"]


def _start(ns: str, wid: str, run: str) -> Op:
    return Op(id=hash((ns, wid)) & 0xFFFF, client=0, kind="start", invoke=0.0, complete=1.0, outcome="ok",
              ns=ns, wid=wid, request_id=f"rq-{wid}", run_id=run, attempts=[{"status": 201}])


def test_a_start_is_checked_on_its_holders_only() -> None:
    ops = [_start("a", "job-1", "r1")]
    holders = {"a": ["n2", "n3", "n4"]}
    rbn = {"n1": {}, "n2": {("a", "job-1"): ["r1"]}, "n3": {("a", "job-1"): ["r1"]},
           "n4": {("a", "job-1"): ["r1"]}}
    assert not check_acknowledged_starts(ops, rbn, holders=holders).anomalies
    # Without holders, n1 (no replica of "a") would look like it lost the start.
    assert [a.kind for a in check_acknowledged_starts(ops, rbn).anomalies] == ["lost"]
    # A holder without it did lose it.
    rbn["n3"] = {}
    lost = check_acknowledged_starts(ops, rbn, holders=holders).anomalies
    assert [(a.kind, a.data["node"]) for a in lost] == [("lost", "n3")]
    # No holder read at all: said, not silently passed.
    res = check_acknowledged_starts(ops, {"n1": {}}, holders=holders)
    assert not res.anomalies and res.notes


def view(node: str, applied: dict[int, int], commit: dict[int, int] | None = None) -> ClusterView:
    local = frozenset(applied)
    return ClusterView(node, "n1", {p: rs[0] for p, rs in SETS.items()}, {p: 1 for p in local}, dict(applied),
                       dict(commit or applied), {p: tuple(rs) for p, rs in SETS.items()}, local)


def test_convergence_compares_the_replicas_of_each_partition_only() -> None:
    views = [view(n, {p: 10 + p for p, rs in SETS.items() if n in rs}) for n in IDS]
    assert all(_partition_converged(views, p) for p in SETS)
    # Partition 1's replicas are n2, n3, n4: n4 behind is not converged, n1 is not asked.
    views[3] = view("n4", {1: 5, 2: 12, 3: 13})
    assert not _partition_converged(views, 1)
    assert _partition_converged(views, 0)
    # A replica that did not answer: not converged.
    assert not _partition_converged([v for v in views if v.node_id != "n2"], 0)
    # Applied behind commit: not converged.
    assert not _partition_converged([view(n, {0: 10}, {0: 11}) for n in ("n1", "n2", "n3")], 0)


def _env(path: Path) -> None:
    env = lmdb.open(str(path), map_size=1 << 20, subdir=True)
    with env.begin(write=True) as txn:
        txn.put(b"s/x", b"1")
    env.close()


def test_digests_flag_a_replica_without_its_partition(tmp_path: Path) -> None:
    sets = {0: ["n1", "n2"], 1: ["n2", "n3"]}
    for nid, ps in (("n1", [0]), ("n2", [0, 1]), ("n3", [])):
        for p in ps:
            (tmp_path / nid / "partitions" / str(p)).mkdir(parents=True)
            _env(tmp_path / nid / "partitions" / str(p))
    got = replica_digests(tmp_path, ["n1", "n2", "n3"], 2, sets)
    assert set(got["0"]) == {"n1", "n2"} and "hash" in got["0"]["n1"]
    assert got["1"]["n3"] == {"error": "missing"}  # n3 is a replica of 1 but has no data
    assert "n1" not in got["1"]  # n1 is not a replica of 1
    without = replica_digests(tmp_path, ["n1", "n2", "n3"], 2)
    assert set(without["1"]) == {"n2"}


def test_filled_looks_at_the_victims_partitions_only(tmp_path: Path) -> None:
    for p in ("0", "2", "meta"):
        d = tmp_path / "n1" / "partitions" / p
        d.mkdir(parents=True)
        (d / "data.mdb").write_bytes(b"\0" * (1 << 20))
    assert _filled(tmp_path, "n1", 4) == ["0", "2", "meta"]
    assert _filled(tmp_path, "n1", [0, 3]) == ["0", "meta"]
