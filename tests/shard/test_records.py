"""Deployment and nexus endpoint records at the apply level (SPEC §5.1, §5.12).

Real LMDB in temporary directories, commands applied through ``StateMachine``
exactly as a replica applies them; random command streams drawn by hypothesis
check determinism and idempotence by index.
"""

from __future__ import annotations

import tempfile
from typing import Any

from hanzo_tasks.shard import encode, reads
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.shard.determinism import (
    assert_identical_replicas,
    assert_prefix_replay_changes_nothing,
    fresh,
)

T0 = 1_700_000_000_000


def cmd(op: str, now: int, ns: str = "default", **fields: Any) -> dict[str, Any]:
    c: dict[str, Any] = {"v": 1, "op": op, "org": "_", "ns": ns, "now": now, "rnd": f"{now:032x}"}
    c.update(fields)
    return c


class Shard:
    """One machine and a running log index, for the example-based tests."""

    def __init__(self, tmp: Any) -> None:
        self.m = fresh(str(tmp), "p")
        self.i = 0
        self.now = T0
        self.do("ns.register")

    def do(self, op: str, ns: str = "default", **fields: Any) -> dict[str, Any]:
        self.i += 1
        self.now += 1000
        res = self.m.apply(self.i, encode(cmd(op, self.now, ns, **fields)))
        assert res is not None
        return res

    def dep(self, name: str) -> dict[str, Any] | None:
        with self.m.store.read() as txn:
            return reads.deployment(txn, "_", "default", name)

    def states(self, name: str) -> dict[str, str]:
        d = self.dep(name)
        assert d is not None
        return {v["buildId"]: v["state"] for v in d["versions"]}


# ---- deployments ---------------------------------------------------------------------


def test_create_is_unique_and_stores_only_given_fields(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    res = s.do("dep.create", name="api", fields={"description": "the API", "ownerEmail": "", "defaultCompute": "s"})
    assert res["ok"]
    d = res["deployment"]
    assert d == {"name": "api", "namespace": "default", "versions": [], "defaultBuildId": "",
                 "createTime": s.now, "description": "the API", "defaultCompute": "s"}
    again = s.do("dep.create", name="api", fields={})
    assert again["ok"] is False and again["code"] == "already_exists"
    assert s.dep("api") == d


def test_update_sets_and_clears_fields(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    s.do("dep.create", name="api", fields={"description": "x"})
    res = s.do("dep.update", name="api", fields={"description": "", "ownerEmail": "a@b.c", "nope": 1})
    assert res["ok"]
    d = s.dep("api")
    assert d is not None and "description" not in d and d["ownerEmail"] == "a@b.c" and "nope" not in d
    assert d["updateTime"] == s.now
    assert s.do("dep.update", name="missing", fields={})["code"] == "not_found"


def test_first_version_is_current_later_ones_draft(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    s.do("dep.create", name="api", fields={})
    v1 = s.do("dep.version_add", name="api", buildId="b1", fields={"image": "img:1", "env": {"A": "1"}})
    assert v1["ok"] and v1["version"] == {"buildId": "b1", "state": "CURRENT", "createTime": s.now,
                                          "image": "img:1", "env": {"A": "1"}}
    assert v1["deployment"]["defaultBuildId"] == "b1"
    v2 = s.do("dep.version_add", name="api", buildId="b2", fields={})
    assert v2["version"]["state"] == "DRAFT" and v2["deployment"]["defaultBuildId"] == "b1"
    dup = s.do("dep.version_add", name="api", buildId="b2", fields={"image": "other"})
    assert dup["code"] == "already_exists"
    assert s.do("dep.version_add", name="missing", buildId="b1", fields={})["code"] == "not_found"
    assert s.states("api") == {"b1": "CURRENT", "b2": "DRAFT"}
    assert [v["buildId"] for v in s.dep("api")["versions"]] == ["b1", "b2"]  # type: ignore[index]


def test_set_current_retires_the_previous_and_is_idempotent(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    s.do("dep.create", name="api", fields={})
    for b in ("b1", "b2", "b3"):
        s.do("dep.version_add", name="api", buildId=b, fields={})
    res = s.do("dep.set_current", name="api", buildId="b2")
    assert res["ok"] and res["changed"] is True and res["deployment"]["defaultBuildId"] == "b2"
    assert s.states("api") == {"b1": "RETIRED", "b2": "CURRENT", "b3": "DRAFT"}
    before = s.m.store.content_hash(b"s")
    again = s.do("dep.set_current", name="api", buildId="b2")
    assert again["ok"] and again["changed"] is False
    assert s.m.store.content_hash(b"s") == before, "an idempotent set-current changes nothing"
    s.do("dep.set_current", name="api", buildId="b1")  # a retired build may come back
    assert s.states("api") == {"b1": "CURRENT", "b2": "RETIRED", "b3": "DRAFT"}
    assert s.do("dep.set_current", name="api", buildId="nope")["code"] == "not_found"
    assert s.do("dep.set_current", name="missing", buildId="b1")["code"] == "not_found"
    assert s.do("dep.set_current", name="api", buildId="")["code"] == "invalid_argument"


def test_version_update_and_delete(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    s.do("dep.create", name="api", fields={})
    s.do("dep.version_add", name="api", buildId="b1", fields={"compute": "small"})
    s.do("dep.version_add", name="api", buildId="b2", fields={})
    res = s.do("dep.version_update", name="api", buildId="b1", fields={"compute": "", "image": "i"})
    assert res["ok"] and res["version"]["image"] == "i" and "compute" not in res["version"]
    assert res["version"]["updateTime"] == s.now
    assert s.do("dep.version_update", name="api", buildId="zz", fields={})["code"] == "not_found"
    cur = s.do("dep.version_delete", name="api", buildId="b1")
    assert cur["code"] == "failed_precondition"
    gone = s.do("dep.version_delete", name="api", buildId="b2")
    assert gone["ok"] and [v["buildId"] for v in gone["deployment"]["versions"]] == ["b1"]
    assert s.do("dep.version_delete", name="api", buildId="b2")["code"] == "not_found"


def test_delete_needs_force_while_versions_exist(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    s.do("dep.create", name="api", fields={})
    s.do("dep.version_add", name="api", buildId="b1", fields={})
    res = s.do("dep.delete", name="api", force=False)
    assert res["code"] == "failed_precondition" and s.dep("api") is not None
    assert s.do("dep.delete", name="api", force=True)["ok"]
    assert s.dep("api") is None
    assert s.do("dep.delete", name="api", force=True)["code"] == "not_found"
    s.do("dep.create", name="empty", fields={})
    assert s.do("dep.delete", name="empty")["ok"]


def test_rejected_command_changes_nothing(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    s.do("dep.create", name="api", fields={})
    s.do("dep.version_add", name="api", buildId="b1", fields={})
    before = s.m.store.content_hash(b"s")
    for op, fields in [("dep.version_delete", {"buildId": "b1"}), ("dep.version_add", {"buildId": "b1", "fields": {}}),
                       ("dep.set_current", {"buildId": "b9"}), ("dep.delete", {})]:
        assert s.do(op, name="api", **fields)["ok"] is False
    assert s.do("dep.create", name="api", fields={"description": "changed"})["ok"] is False
    assert s.m.store.content_hash(b"s") == before


def test_writes_need_a_live_namespace(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    assert s.do("dep.create", ns="nowhere", name="api", fields={})["code"] == "not_found"
    assert s.do("nexus.put", ns="nowhere", name="e", target="t")["code"] == "not_found"
    s.do("ns.delete")
    assert s.do("dep.create", name="api", fields={})["code"] == "failed_precondition"
    assert s.do("nexus.put", name="e", target="t")["code"] == "failed_precondition"


# ---- nexus endpoints ------------------------------------------------------------------------


def test_nexus_create_or_replace_list_delete(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    first = s.do("nexus.put", name="pay", target="ns2://billing/pay", description="d")
    assert first["ok"] and first["created"] is True
    created = s.now
    assert first["endpoint"] == {"name": "pay", "namespace": "default", "target": "ns2://billing/pay",
                                 "description": "d", "createTime": created}
    second = s.do("nexus.put", name="pay", target="ns2://billing/pay2", description="")
    assert second["created"] is False
    assert second["endpoint"] == {"name": "pay", "namespace": "default", "target": "ns2://billing/pay2",
                                  "createTime": created}
    s.do("nexus.put", name="a", target="t")
    s.do("nexus.put", name="z", target="t")
    with s.m.store.read() as txn:
        assert [e["name"] for e in reads.nexus_endpoints(txn, "_", "default", None, 10)] == ["a", "pay", "z"]
        assert [e["name"] for e in reads.nexus_endpoints(txn, "_", "default", "a", 1)] == ["pay"]
        assert reads.nexus_endpoints(txn, "_", "default", "z", 10) == []
        assert reads.nexus_endpoint(txn, "_", "default", "a")["target"] == "t"  # type: ignore[index]
    assert s.do("nexus.delete", name="pay")["ok"]
    assert s.do("nexus.delete", name="pay")["code"] == "not_found"
    assert s.do("nexus.put", name="x", target="")["code"] == "invalid_argument"


def test_deployment_list_pages_by_name(tmp_path: Any) -> None:
    s = Shard(tmp_path)
    for n in ("c", "a", "b", "é"):
        s.do("dep.create", name=n, fields={})
    s.do("dep.create", ns="other", name="zz", fields={})  # not registered: rejected
    with s.m.store.read() as txn:
        assert [d["name"] for d in reads.deployments(txn, "_", "default", None, 10)] == ["a", "b", "c", "é"]
        assert [d["name"] for d in reads.deployments(txn, "_", "default", "b", 1)] == ["c"]
        # The nexus prefix sees none of them.
        assert reads.nexus_endpoints(txn, "_", "default", None, 10) == []


# ---- determinism and idempotence (hypothesis) -----------------------------------------------

NAMES = ["api", "web"]
BUILDS = ["b1", "b2", "b3", ""]
NAMESPACES = ["default", "billing"]


@st.composite
def streams(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=1, max_value=40))
    now = T0
    out = [cmd("ns.register", now, "default")]
    text = st.sampled_from(["", "x", "描述", None])
    for _ in range(n):
        now += draw(st.integers(min_value=0, max_value=5000))
        ns = draw(st.sampled_from(NAMESPACES))
        name = draw(st.sampled_from(NAMES))
        build = draw(st.sampled_from(BUILDS))
        op = draw(st.sampled_from([
            "ns.register", "ns.delete", "nexus.put", "nexus.delete", "dep.create", "dep.update", "dep.delete",
            "dep.set_current", "dep.version_add", "dep.version_update", "dep.version_delete",
        ]))
        fields = {k: v for k, v in {"description": draw(text), "compute": draw(text), "image": draw(text),
                                    "ownerEmail": draw(text), "defaultCompute": draw(text),
                                    "env": draw(st.sampled_from([None, {}, {"A": "1"}]))}.items()
                  if draw(st.booleans())}
        if op == "ns.register":
            c = cmd(op, now, ns)
        elif op == "ns.delete":
            c = cmd(op, now, ns) if draw(st.integers(0, 4)) == 0 else cmd("ns.register", now, ns)
        elif op == "nexus.put":
            c = cmd(op, now, ns, name=name, target=draw(st.sampled_from(["t1", "t2", ""])),
                    description=draw(st.sampled_from(["", "d"])))
        elif op in ("nexus.delete", "dep.create", "dep.update"):
            c = cmd(op, now, ns, name=name, fields=fields)
        elif op == "dep.delete":
            c = cmd(op, now, ns, name=name, force=draw(st.booleans()))
        else:
            c = cmd(op, now, ns, name=name, buildId=build, fields=fields)
        out.append(c)
    return out


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(stream=streams(), split=st.integers(min_value=1, max_value=7))
def test_same_stream_gives_identical_replicas(stream: list[dict[str, Any]], split: int) -> None:
    assert_identical_replicas(stream, split)


@SETTINGS
@given(stream=streams(), cut=st.integers(min_value=0, max_value=41))
def test_replaying_any_prefix_changes_nothing(stream: list[dict[str, Any]], cut: int) -> None:
    assert_prefix_replay_changes_nothing(stream, cut)


@SETTINGS
@given(stream=streams())
def test_invariants_hold_after_any_stream(stream: list[dict[str, Any]]) -> None:
    """At most one CURRENT version, and ``defaultBuildId`` names it (or is empty with no versions)."""
    entries = [(i + 1, encode(c)) for i, c in enumerate(stream)]
    with tempfile.TemporaryDirectory() as tmp:
        m = fresh(tmp, "m")
        m.apply_batch(entries)
        with m.store.read() as txn:
            for ns in NAMESPACES:
                for d in reads.deployments(txn, "_", ns, None, 100):
                    current = [v["buildId"] for v in d["versions"] if v["state"] == "CURRENT"]
                    if d["versions"]:
                        assert current == [d["defaultBuildId"]], d
                    else:
                        assert current == [] and d["defaultBuildId"] == "", d
                    assert len({v["buildId"] for v in d["versions"]}) == len(d["versions"])
