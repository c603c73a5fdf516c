"""Replica sets across failure domains (``node_zone``): with several nodes per
machine, the sets span as many machines as the replication factor allows,
from bootstrap and after the keeper's steps (top-up, zone repair, balancing),
and replicas stay balanced as far as the zones allow."""

from __future__ import annotations

from hanzo_tasks.cluster.replica_sets import (
    balancing_move,
    bootstrap_layout,
    meta_voter_candidates,
    replica_load,
    surplus_meta_voter,
    wanted,
    zones_of,
)
from hanzo_tasks.routing import distinct_domains, partition_plan
from hypothesis import given, settings
from hypothesis import strategies as st

SEED = "tasks"


def machines(zone_count: int, per_zone: int) -> tuple[list[str], dict[str, str | None]]:
    """``zone_count * per_zone`` nodes, dealt round-robin onto the zones (so
    that node ids say nothing about machines)."""
    members = [f"n{i}" for i in range(1, zone_count * per_zone + 1)]
    return members, {m: f"machine-{i % zone_count}" for i, m in enumerate(members)}


def settle(layout: dict[int, list[str]], members: set[str], rf: int, zones: dict[str, str | None]) -> int:
    """Run the keeper's steps, one membership change at a time as it makes
    them, until none is left: each set becomes what ``wanted`` says (an
    addition, then a removal), then balancing moves. Returns the steps."""
    plan = partition_plan(len(layout), members, rf, SEED)
    k = min(rf, len(members))
    for step in range(40 * len(layout) * k + 40):
        for p, cur in sorted(layout.items()):
            want = wanted(cur, members, p, rf, SEED, replica_load(layout, members), plan[p].preferred_leader, zones)
            if want != cur:
                add = [n for n in want if n not in cur]
                layout[p] = [*cur, add[0]] if add else [n for n in cur if n != [n for n in cur if n not in want][0]]
                break
        else:
            move = balancing_move(layout, members, rf, SEED, zones)
            if move is None:
                return step
            p, node = move
            assert node not in layout[p]
            layout[p] = [*layout[p], node]
    raise AssertionError("the keeper's steps did not end")


def spread(load: dict[str, int]) -> int:
    return max(load.values()) - min(load.values())


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 32), st.integers(1, 4), st.integers(1, 3), st.integers(1, 5))
def test_bootstrap_sets_span_distinct_machines(partitions: int, zone_count: int, per_zone: int, rf: int) -> None:
    members, zones = machines(zone_count, per_zone)
    layout = bootstrap_layout(partitions, members, rf, SEED, zones)
    plan = partition_plan(partitions, members, rf, SEED)
    k = min(rf, len(members))
    for p, nodes in enumerate(layout):
        assert len(nodes) == len(set(nodes)) == k
        assert nodes[0] == plan[p].preferred_leader
        assert distinct_domains(nodes, zones) == min(k, zone_count), (nodes, zones)
    load = replica_load(dict(enumerate(layout)), set(members))
    if partitions * k >= len(members):
        # Equal machines: the greedy pass may end one off; the keeper evens it out.
        assert spread(load) <= 2, load
        after = dict(enumerate(layout))
        settle(after, set(members), rf, zones)
        assert all(distinct_domains(n, zones) == min(k, zone_count) for n in after.values())
        assert len(members) <= k or k < 2 or spread(replica_load(after, set(members))) <= 1


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 24), st.integers(1, 8), st.integers(1, 5))
def test_without_zones_bootstrap_is_unchanged(partitions: int, n: int, rf: int) -> None:
    members = [f"n{i}" for i in range(1, n + 1)]
    plain = bootstrap_layout(partitions, members, rf, SEED)
    assert bootstrap_layout(partitions, members, rf, SEED, {m: None for m in members}) == plain
    assert bootstrap_layout(partitions, members, rf, SEED, {m: f"own-{m}" for m in members}) == plain


@settings(max_examples=120, deadline=None)
@given(st.data(), st.integers(1, 16), st.integers(1, 8), st.integers(1, 4))
def test_the_keeper_repairs_any_layout_to_span_the_machines(data: st.DataObject, partitions: int, n: int,
                                                            rf: int) -> None:
    """Any zones (some nodes without one), any starting sets (such as a
    bootstrap made before the zones were known): the keeper's steps end, every
    set spans as many domains as the members allow, and with equal machines
    every member holds within one replica of every other."""
    members = [f"n{i}" for i in range(1, n + 1)]
    zones = {m: data.draw(st.sampled_from(["a", "b", "c", None])) for m in members}
    k = min(rf, n)
    sets = st.permutations(members).map(lambda ms: list(ms[:k]))
    layout = dict(enumerate(data.draw(st.lists(sets, min_size=partitions, max_size=partitions))))
    settle(layout, set(members), rf, zones)
    for nodes in layout.values():
        assert len(nodes) == len(set(nodes)) == k
        assert distinct_domains(nodes, zones) == min(k, distinct_domains(members, zones)), (nodes, zones)


@settings(max_examples=80, deadline=None)
@given(st.data(), st.integers(1, 24), st.integers(2, 4), st.integers(1, 3), st.integers(2, 4))
def test_equal_machines_end_balanced(data: st.DataObject, partitions: int, zone_count: int, per_zone: int,
                                     rf: int) -> None:
    members, zones = machines(zone_count, per_zone)
    k = min(rf, len(members))
    sets = st.permutations(members).map(lambda ms: list(ms[:k]))
    layout = dict(enumerate(data.draw(st.lists(sets, min_size=partitions, max_size=partitions))))
    settle(layout, set(members), rf, zones)
    assert all(distinct_domains(nodes, zones) == min(k, zone_count) for nodes in layout.values())
    if len(members) > k:
        assert spread(replica_load(layout, set(members))) <= 1, layout


def test_a_whole_set_on_too_few_machines_gains_a_node_then_sheds_a_duplicate() -> None:
    members, zones = machines(3, 2)  # n1 n4 on machine-0, n2 n5 on machine-1, n3 n6 on machine-2
    members_set = set(members)
    cur = ["n1", "n4", "n2"]  # two replicas on machine-0, none on machine-2
    load = dict.fromkeys(members, 1)
    grown = wanted(cur, members_set, 0, 3, SEED, load, "n1", zones)
    assert grown[:3] == cur and len(grown) == 4 and zones[grown[3]] == "machine-2"
    shed = wanted(grown, members_set, 0, 3, SEED, replica_load({0: grown}, members_set), "n1", zones)
    assert sorted(zones[n] for n in shed) == ["machine-0", "machine-1", "machine-2"]
    assert "n1" in shed and "n4" not in shed  # the preferred leader stays; its machine-mate goes
    # Without load (no shedding to follow), nothing is added.
    assert wanted(cur, members_set, 0, 3, SEED, zones=zones) == cur


def test_a_dead_machine_moves_nothing() -> None:
    """Members that are down stay members: a set that spans the machines is
    left alone while a machine is away (its two nodes still count)."""
    members, zones = machines(3, 2)
    layout = dict(enumerate(bootstrap_layout(8, members, 3, SEED, zones)))
    load = replica_load(layout, set(members))
    plan = partition_plan(8, members, 3, SEED)
    for p, nodes in layout.items():
        assert wanted(nodes, set(members), p, 3, SEED, load, plan[p].preferred_leader, zones) == nodes


def test_zones_of_reads_member_records() -> None:
    records = {"n1": {"id": "n1", "zone": "m-a"}, "n2": {"id": "n2"}, "n3": {"id": "n3", "zone": ""}}
    assert zones_of(records) == {"n1": "m-a", "n2": None, "n3": None}


def test_meta_voters_without_zones_are_as_before() -> None:
    voters = {"n1", "n2", "n3"}
    assert meta_voter_candidates(voters, ["n5", "n4"], None, 5) == ["n4", "n5"]
    assert meta_voter_candidates(voters | {"n4", "n5"}, ["n6"], None, 5) == []


@settings(max_examples=150, deadline=None)
@given(st.integers(2, 4), st.integers(2, 4), st.data())
def test_meta_voters_end_spread_over_the_machines(zone_count: int, per_zone: int, data: st.DataObject) -> None:
    """Start from the bootstrap voters (the first five ids, which may sit on
    few machines) and apply the keeper's changes one at a time: it ends with
    five voters (or every member) and no machine holds two more than another."""
    members, zones = machines(zone_count, per_zone)
    ids = data.draw(st.permutations(members))
    zones = dict(zip(ids, [zones[m] for m in members], strict=True))  # any ids on any machines
    voters = set(sorted(members)[:5])
    target = min(5, len(members))
    for _ in range(40):
        if len(voters) > target:
            voters.discard(surplus_meta_voter(voters, zones, keep=min(voters)))
            continue
        options = meta_voter_candidates(voters, sorted(set(members) - voters), zones, target)
        if not options:
            break
        voters.add(options[0])
    else:
        raise AssertionError("the meta voters kept changing")
    assert len(voters) == target
    per_machine = [sum(1 for v in voters if zones[v] == z) for z in set(zones.values())]
    assert max(per_machine) - min(per_machine) <= 1, (voters, zones)
    if zone_count >= 3:
        assert max(per_machine) <= (target - 1) // 2  # losing one machine keeps a majority
