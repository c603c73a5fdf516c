"""Placement pins and epochs (ARCHITECTURE "Migration", step 5 "Flip")."""

from __future__ import annotations

import threading

import pytest
from hanzo_tasks.routing import Pin, Placement, PlacementTable, partition_of

SEED = "tasks"
P = 16


def test_unpinned_shards_use_hrw_and_epoch_zero() -> None:
    table = PlacementTable()
    for i in range(50):
        ns = f"ns{i}"
        assert table.partition("acme", ns, SEED, P) == partition_of("acme", ns, SEED, P)
        assert table.epoch("acme", ns) == 0
        assert not table.pinned("acme", ns)
        assert table.placement("acme", ns, SEED, P) == Placement(
            partition_of("acme", ns, SEED, P), 0, False
        )
    assert len(table) == 0


def test_pins_override_hrw_and_bump_the_epoch() -> None:
    table = PlacementTable()
    home = partition_of("acme", "orders", SEED, P)
    dest = (home + 1) % P
    assert table.pin("acme", "orders", dest) == 1
    assert table.partition("acme", "orders", SEED, P) == dest
    assert table.placement("acme", "orders", SEED, P) == Placement(dest, 1, True)
    assert table.pin("acme", "orders", home) == 2  # moving back is a new flip
    assert table.pin("acme", "orders", home) == 3  # every pin is a new epoch
    assert table.placement("acme", "orders", SEED, P) == Placement(home, 3, True)
    # Other shards (even the same namespace in another org) are untouched.
    assert table.epoch("other", "orders") == 0
    assert table.partition("other", "orders", SEED, P) == partition_of("other", "orders", SEED, P)
    assert table.pins() == {("acme", "orders"): Pin(home, 3)}


def test_pins_snapshot_is_a_copy_and_can_restore_a_table() -> None:
    table = PlacementTable()
    table.pin("a", "x", 3)
    table.pin("a", "x", 4)
    table.pin("b", "y", 20)  # beyond P: the meta group is authoritative
    snap = table.pins()
    snap.clear()
    assert len(table) == 2
    restored = PlacementTable(table.pins())
    assert restored.pins() == table.pins()
    assert restored.partition("b", "y", SEED, P) == 20
    assert restored.pin("a", "x", 5) == 3  # epochs continue, never restart


def test_bad_pins_are_rejected() -> None:
    with pytest.raises(ValueError):
        PlacementTable().pin("a", "x", -1)
    with pytest.raises(ValueError):
        PlacementTable({("a", "x"): (1, 0)})


def test_concurrent_pins_get_distinct_epochs() -> None:
    table = PlacementTable()
    got: list[int] = []
    lock = threading.Lock()

    def flip() -> None:
        for _ in range(100):
            e = table.pin("a", "x", 1)
            with lock:
                got.append(e)

    threads = [threading.Thread(target=flip) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(1, 401))
    assert table.epoch("a", "x") == 400
