"""Replicas in distinct failure domains (``node_zone``): several nodes per
machine, and no two replicas of a partition on one machine while there are
enough machines. Without zones every node is its own domain and the
placement is exactly the per-node one."""

from __future__ import annotations

import pytest
from hanzo_tasks.routing import (
    distinct_domains,
    failure_domain,
    partition_plan,
    rank,
    replicas,
    spread_fill,
)
from hypothesis import given, settings
from hypothesis import strategies as st

ZONE = st.sampled_from(["machine-a", "machine-b", "machine-c", "machine-d", None])


@st.composite
def zoned_members(draw: st.DrawFn, max_size: int = 9) -> tuple[list[str], dict[str, str | None]]:
    members = draw(st.lists(st.from_regex(r"n[0-9]{1,3}", fullmatch=True), min_size=1, max_size=max_size,
                            unique=True))
    return members, {m: draw(ZONE) for m in members}


def test_a_node_without_a_zone_is_its_own_domain() -> None:
    zones = {"machine-a": None, "n2": "machine-a"}
    # A node named like another node's zone shares nothing with it.
    assert failure_domain("machine-a", zones) != failure_domain("n2", zones)
    assert failure_domain("n1", None) != failure_domain("n2", None)
    assert failure_domain("n1", {"n1": "m", "n2": "m"}) == failure_domain("n2", {"n1": "m", "n2": "m"})
    assert failure_domain("n1", {"n1": ""}) == failure_domain("n1", None)


def test_spread_fill_takes_new_domains_first_then_repeats_in_order() -> None:
    zones = {"a1": "a", "a2": "a", "b1": "b", "c1": "c"}
    assert spread_fill(["a1"], ["a2", "b1", "c1"], 3, zones) == ["a1", "b1", "c1"]
    assert spread_fill(["a1"], ["a2", "b1"], 3, zones) == ["a1", "b1", "a2"]  # two domains only
    assert spread_fill([], ["a2", "a1", "b1"], 2, None) == ["a2", "a1"]  # no zones: plain order
    assert spread_fill(["a1"], ["a1", "b1"], 1, zones) == ["a1"]


@settings(max_examples=200, deadline=None)
@given(zm=zoned_members(), partition=st.integers(0, 63), rf=st.integers(1, 5), data=st.data())
def test_replicas_span_as_many_zones_as_exist(
    zm: tuple[list[str], dict[str, str | None]], partition: int, rf: int, data: st.DataObject
) -> None:
    members, zones = zm
    k = min(rf, len(members))
    leader = data.draw(st.sampled_from(members))
    reps = replicas(partition, members, rf, "tasks", leader=leader, zones=zones)
    assert len(reps) == len(set(reps)) == k and reps[0] == leader
    assert distinct_domains(reps, zones) == min(k, distinct_domains(members, zones))
    assert replicas(partition, list(reversed(members)), rf, "tasks", leader=leader, zones=zones) == reps


@settings(max_examples=100, deadline=None)
@given(members=st.lists(st.from_regex(r"n[0-9]{1,3}", fullmatch=True), min_size=1, max_size=8, unique=True),
       partition=st.integers(0, 63), rf=st.integers(1, 5))
def test_without_zones_or_with_one_zone_per_node_nothing_changes(members: list[str], partition: int, rf: int) -> None:
    plain = replicas(partition, members, rf, "tasks")
    assert plain == rank("", "", str(partition), "tasks", members)[: min(rf, len(members))]
    assert replicas(partition, members, rf, "tasks", zones={m: f"z-{m}" for m in members}) == plain
    assert replicas(partition, members, rf, "tasks", zones={m: None for m in members}) == plain


def test_six_nodes_on_three_machines() -> None:
    members = [f"n{i}" for i in range(1, 7)]
    zones = {m: f"machine-{'abc'[i % 3]}" for i, m in enumerate(members)}
    plan = partition_plan(16, members, 3, "tasks", zones=zones)
    plain = partition_plan(16, members, 3, "tasks")
    assert [p.preferred_leader for p in plan] == [p.preferred_leader for p in plain]
    for p in plan:
        assert p.replicas[0] == p.preferred_leader
        assert sorted(zones[n] for n in p.replicas) == ["machine-a", "machine-b", "machine-c"]
    # Without zones some partition has two replicas on one machine: zones matter here.
    assert any(distinct_domains(p.replicas, zones) < 3 for p in plain)


@pytest.mark.parametrize("machines", [1, 2])
def test_fewer_machines_than_replicas_share_as_little_as_they_can(machines: int) -> None:
    members = [f"n{i}" for i in range(1, 7)]
    zones = {m: f"machine-{i % machines}" for i, m in enumerate(members)}
    for p in partition_plan(8, members, 3, "tasks", zones=zones):
        assert len(p.replicas) == 3 and distinct_domains(p.replicas, zones) == machines
