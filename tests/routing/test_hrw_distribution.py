"""HRW key distribution: balance, and the ~1/N movement that makes membership
changes cheap (ARCHITECTURE "Routing")."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hanzo_tasks.routing import Membership, NoOwner, partition_of, rank

SEED = "tasks"
KEYS = 10_000


def _keys(n: int = KEYS, seed: int = 7) -> list[tuple[str, str, str]]:
    rnd = random.Random(seed)
    return [
        (f"org{rnd.randrange(50)}", f"ns-{rnd.randrange(10**6)}", f"tq-{rnd.randrange(10**9)}")
        for _ in range(n)
    ]


def _owners(view: Membership, keys: list[tuple[str, str, str]]) -> list[str]:
    return [view.owner(org, ns, tq, SEED) for org, ns, tq in keys]


@pytest.fixture(scope="module")
def keys() -> list[tuple[str, str, str]]:
    return _keys()


@pytest.fixture(scope="module")
def three(keys: list[tuple[str, str, str]]) -> list[str]:
    nodes = frozenset({"n1", "n2", "n3"})
    return _owners(Membership(nodes, nodes), keys)


def test_three_nodes_each_own_a_third(three: list[str]) -> None:
    counts = Counter(three)
    assert set(counts) == {"n1", "n2", "n3"}
    for node, c in counts.items():
        assert abs(c / KEYS - 1 / 3) <= 0.03, (node, c)


def test_adding_a_fourth_node_moves_about_a_quarter(
    keys: list[tuple[str, str, str]], three: list[str]
) -> None:
    nodes = frozenset({"n1", "n2", "n3", "n4"})
    four = _owners(Membership(nodes, nodes), keys)
    moved = [(a, b) for a, b in zip(three, four, strict=True) if a != b]
    assert 0.20 <= len(moved) / KEYS <= 0.30, len(moved)
    # Every key that moved went to the newcomer: no reshuffling among old nodes.
    assert {b for _, b in moved} == {"n4"}


def test_removing_a_node_moves_only_its_keys(
    keys: list[tuple[str, str, str]], three: list[str]
) -> None:
    nodes = frozenset({"n1", "n3"})
    two = _owners(Membership(nodes, nodes), keys)
    for before, after in zip(three, two, strict=True):
        if before != "n2":
            assert after == before
        else:
            assert after in nodes


def test_a_dead_node_is_like_a_removed_one(
    keys: list[tuple[str, str, str]], three: list[str]
) -> None:
    view = Membership(frozenset({"n1", "n2", "n3"}), frozenset({"n1", "n3"}))
    assert _owners(view, keys) == _owners(Membership(view.alive, view.alive), keys)


def test_partition_of_is_balanced_over_16_partitions() -> None:
    rnd = random.Random(11)
    shards = {(f"org{rnd.randrange(100)}", f"ns-{rnd.randrange(10**9)}") for _ in range(KEYS)}
    counts = Counter(partition_of(org, ns, SEED, 16) for org, ns in shards)
    assert set(counts) == set(range(16))
    expected = len(shards) / 16  # ~625, standard deviation ~24
    for p, c in counts.items():
        assert abs(c - expected) <= 0.2 * expected, (p, c)


def test_owner_falls_back_to_next_alive_replica_and_returns() -> None:
    members = frozenset({"a", "b", "c", "d", "e"})
    reps = ["a", "b", "c", "d"]  # "e" is a member but not a replica
    for org, ns, tq in _keys(200, seed=3):
        order = rank(org, ns, tq, SEED, reps)
        view = Membership(members, members)
        assert view.owner(org, ns, tq, SEED, reps) == order[0]
        assert view.ranking(org, ns, tq, SEED, reps) == order
        # The winner dies: the next-ranked replica takes over, never a non-replica.
        down = Membership(members, members - {order[0]}, 1)
        assert down.owner(org, ns, tq, SEED, reps) == order[1]
        assert down.ranking(org, ns, tq, SEED, reps) == order[1:]
        # Two die: the third takes over.
        down2 = Membership(members, members - {order[0], order[1]}, 2)
        assert down2.owner(org, ns, tq, SEED, reps) == order[2]
        # The winner comes back: it owns the key again.
        back = Membership(members, members - {order[1]}, 3)
        assert back.owner(org, ns, tq, SEED, reps) == order[0]


def test_owner_defaults_to_all_members_and_raises_when_none_alive() -> None:
    members = frozenset({"a", "b", "c"})
    view = Membership(members, members)
    assert view.owner("o", "n", "q", SEED) == rank("o", "n", "q", SEED, members)[0]
    dead = Membership(members, frozenset({"c"}))
    with pytest.raises(NoOwner):
        dead.owner("o", "n", "q", SEED, ["a", "b"])
    assert dead.ranking("o", "n", "q", SEED, ["a", "b"]) == []
    with pytest.raises(NoOwner):
        Membership(frozenset(), frozenset()).owner("o", "n", "q", SEED)
    assert issubclass(NoOwner, LookupError)
