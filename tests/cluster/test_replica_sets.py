"""The replica-set layout: balanced at bootstrap, minimal changes when members leave."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from cluster.replica_sets import bootstrap_layout, wanted
from routing import partition_plan

members_st = st.integers(min_value=1, max_value=9).map(lambda n: [f"n{i}" for i in range(1, n + 1)])


@given(st.integers(min_value=1, max_value=32), members_st, st.integers(min_value=1, max_value=5))
def test_bootstrap_layout_is_balanced_and_leader_first(partitions: int, members: list[str], rf: int) -> None:
    layout = bootstrap_layout(partitions, members, rf, "tasks")
    plan = partition_plan(partitions, members, rf, "tasks")
    assert len(layout) == partitions
    k = min(rf, len(members))
    for p, nodes in enumerate(layout):
        assert len(nodes) == len(set(nodes)) == k
        assert set(nodes) <= set(members)
        assert nodes[0] == plan[p].preferred_leader  # only a replica can lead
    counts = Counter(n for nodes in layout for n in nodes)
    if partitions * k >= len(members):
        assert max(counts.values()) - min(counts.get(m, 0) for m in members) <= 1, counts
    assert layout == bootstrap_layout(partitions, list(reversed(members)), rf, "tasks")  # order-free


@given(members_st, st.integers(min_value=1, max_value=5), st.integers(min_value=0, max_value=15), st.data())
def test_wanted_keeps_survivors_and_tops_up(members: list[str], rf: int, partition: int, data: st.DataObject) -> None:
    everyone = [*members, "gone-1", "gone-2"]
    current = data.draw(st.lists(st.sampled_from(everyone), min_size=1, max_size=6, unique=True))
    want = wanted(current, set(members), partition, rf, "tasks")
    survivors = [n for n in current if n in members]
    assert want[: len(survivors)] == survivors  # nobody who is still a member is moved
    assert len(want) == len(set(want)) == max(len(survivors), min(rf, len(members)))
    assert set(want) <= set(members)
    assert wanted(want, set(members), partition, rf, "tasks") == want  # a fixed point: nothing more to do


def test_a_leaving_member_is_replaced_by_one_node() -> None:
    layout = bootstrap_layout(4, ["n1", "n2", "n3", "n4"], 3, "tasks")
    for p, nodes in enumerate(layout):
        if "n2" in nodes:
            want = wanted(nodes, {"n1", "n3", "n4"}, p, 3, "tasks")
            assert sorted(want) == ["n1", "n3", "n4"]


@given(st.integers(min_value=1, max_value=16), st.integers(min_value=2, max_value=7), st.integers(min_value=1, max_value=4))
def test_balancing_moves_converge_to_an_even_spread(partitions: int, n: int, rf: int) -> None:
    """Start from the layout of a smaller cluster, add a member, apply the
    keeper's steps (a balancing add, then the shed) until none is left."""
    from cluster.replica_sets import balancing_move, effective_leader, replica_load

    before = [f"n{i}" for i in range(1, n)]
    members = {*before, f"n{n}"}
    layout = {p: nodes for p, nodes in enumerate(bootstrap_layout(partitions, before, rf, "tasks"))}
    k = min(rf, len(members))
    for _ in range(4 * partitions * k):
        move = balancing_move(layout, members, rf, "tasks")
        if move is None:
            break
        p, node = move
        assert node not in layout[p]
        layout[p] = [*layout[p], node]
        load = replica_load(layout, members)
        leader = effective_leader(partition_plan(partitions, members, rf, "tasks")[p].preferred_leader, layout[p])
        layout[p] = wanted(layout[p], members, p, rf, "tasks", load, leader)
        assert len(layout[p]) == len(set(layout[p])) == max(k, len(layout[p]))
    else:
        raise AssertionError("balancing did not converge")
    load = replica_load(layout, members)
    if len(members) > k and k >= 2:
        # With one replica per partition that replica is its leader, and a
        # preferred leader is never shed: the spread then follows leadership.
        assert max(load.values()) - min(load.values()) <= 1, load
    assert all(len(nodes) == k or len(before) < k for nodes in layout.values())
