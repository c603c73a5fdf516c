"""Membership views and the one membership-change event (ARCHITECTURE "Routing":
"Membership changes fire one event; dispatch and timers re-target from it")."""

from __future__ import annotations

import dataclasses
import threading
import time

import pytest
from hanzo_tasks.routing import Membership, MembershipWatcher

Event = tuple[Membership, Membership]


def recording(watcher: MembershipWatcher) -> list[Event]:
    events: list[Event] = []
    watcher.subscribe(lambda old, new: events.append((old, new)))
    return events


def fs(*names: str) -> frozenset[str]:
    return frozenset(names)


def test_membership_is_immutable_and_validated() -> None:
    view = Membership({"a", "b"}, ["a"], 3)  # type: ignore[arg-type]
    assert view.members == fs("a", "b") and view.alive == fs("a") and view.epoch == 3
    assert view.is_alive("a") and not view.is_alive("b")
    with pytest.raises(dataclasses.FrozenInstanceError):
        view.epoch = 4  # type: ignore[misc]
    with pytest.raises(ValueError):
        Membership(fs("a"), fs("a", "b"))
    with pytest.raises(ValueError):
        Membership(fs("a"), fs("a"), -1)


def test_one_event_per_change_with_old_and_new() -> None:
    w = MembershipWatcher()
    events = recording(w)
    v1 = w.update(members=["a", "b", "c"], alive=["a", "b", "c"])
    assert v1 == Membership(fs("a", "b", "c"), fs("a", "b", "c"), 1)
    v2 = w.update(alive=["a", "c"])
    assert v2 == Membership(fs("a", "b", "c"), fs("a", "c"), 2)
    v3 = w.update(members=["a", "c", "d"])  # "b" leaves; "d" joins, not yet alive
    assert v3 == Membership(fs("a", "c", "d"), fs("a", "c"), 3)
    assert events == [(Membership(fs(), fs(), 0), v1), (v1, v2), (v2, v3)]
    assert w.current is v3 and w.epoch == 3


def test_no_event_and_no_epoch_for_noop_updates() -> None:
    w = MembershipWatcher(Membership(fs("a", "b"), fs("a", "b"), 5))
    events = recording(w)
    before = w.current
    assert w.update() is before
    assert w.update(members=["b", "a"]) is before
    assert w.update(alive={"a", "b"}) is before
    assert w.update(members=("a", "b"), alive=("b", "a")) is before
    assert events == [] and w.epoch == 5


def test_invalid_update_changes_nothing() -> None:
    w = MembershipWatcher(Membership(fs("a"), fs("a")))
    events = recording(w)
    with pytest.raises(ValueError):
        w.update(alive=["a", "z"])
    assert events == [] and w.current == Membership(fs("a"), fs("a"))


def test_unsubscribe_and_failing_subscribers() -> None:
    w = MembershipWatcher()
    calls: list[str] = []

    def boom(old: Membership, new: Membership) -> None:
        calls.append("boom")
        raise RuntimeError("subscriber bug")

    w.subscribe(boom)
    unsubscribe = w.subscribe(lambda old, new: calls.append("first"))
    w.subscribe(lambda old, new: calls.append("second"))
    w.update(members=["a"])
    assert calls == ["boom", "first", "second"]  # in order; a failure skips nobody
    unsubscribe()
    unsubscribe()  # idempotent
    w.update(alive=["a"])
    assert calls == ["boom", "first", "second", "boom", "second"]


def test_subscribers_run_outside_the_lock_and_may_update() -> None:
    w = MembershipWatcher(Membership(fs("a", "b"), fs("a", "b")))
    events = recording(w)
    seen: list[int] = []

    def heal(old: Membership, new: Membership) -> None:
        seen.append(w.current.epoch)  # reading the watcher must not deadlock
        if "b" not in new.alive:
            w.update(alive=new.members)  # nested: delivered after this event

    w.subscribe(heal)
    w.update(alive=["a"])
    assert [(o.epoch, n.epoch) for o, n in events] == [(0, 1), (1, 2)]
    assert events[1][1].alive == fs("a", "b")
    assert seen == [1, 2]


def test_concurrent_updates_give_strictly_increasing_epochs_in_order() -> None:
    nodes = [f"n{i}" for i in range(8)]
    w = MembershipWatcher(Membership(frozenset(nodes), frozenset(nodes)))
    events = recording(w)
    results: list[list[Membership]] = [[] for _ in range(8)]
    start = threading.Barrier(8)

    def flap(i: int) -> None:
        start.wait()
        for j in range(200):
            alive = frozenset(n for k, n in enumerate(nodes) if (k + i + j) % 3)
            view = w.update(alive=alive)
            assert view.alive == alive
            results[i].append(view)

    threads = [threading.Thread(target=flap, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)

    for mine in results:  # each thread sees its own views in increasing epoch order
        epochs = [v.epoch for v in mine]
        assert epochs == sorted(epochs)
    epochs = [new.epoch for _, new in events]
    assert epochs == list(range(1, len(events) + 1))  # once each, in order, no gaps
    for (_, prev), (old, new) in zip(events, events[1:], strict=False):
        assert old == prev  # a chain: each event starts where the last one ended
        assert new.alive != old.alive  # and is a real change
    assert events[-1][1] == w.current


def test_update_returns_after_its_event_was_delivered() -> None:
    w = MembershipWatcher(Membership(fs("a", "b"), fs("a", "b")))
    gate = threading.Event()
    delivered: list[tuple[int, str]] = []

    def slow(old: Membership, new: Membership) -> None:
        if new.epoch == 1:
            gate.wait(10)
        delivered.append((new.epoch, threading.current_thread().name))

    w.subscribe(slow)
    first = threading.Thread(target=w.update, kwargs={"alive": ["a"]}, name="first")
    first.start()
    while w.epoch < 1:
        time.sleep(0.001)
    returned: list[list[tuple[int, str]]] = []
    second = threading.Thread(
        target=lambda: (w.update(alive=["b"]), returned.append(list(delivered))), name="second"
    )
    second.start()
    second.join(0.2)
    assert second.is_alive(), "update returned before its event was delivered"
    assert w.epoch == 2 and delivered == []  # the change is visible; delivery waits its turn
    gate.set()
    first.join(10)
    second.join(10)
    # In order, never concurrently: the thread already delivering delivers both.
    assert delivered == [(1, "first"), (2, "first")]
    assert returned == [[(1, "first"), (2, "first")]]


def test_a_subscriber_that_escapes_does_not_wedge_the_watcher() -> None:
    class Stop(BaseException):
        pass

    w = MembershipWatcher()
    events = recording(w)
    fired: list[int] = []

    def escape(old: Membership, new: Membership) -> None:
        fired.append(new.epoch)
        if new.epoch == 1:
            raise Stop

    w.subscribe(escape)
    with pytest.raises(Stop):
        w.update(members=["a"])
    assert w.epoch == 1  # the change itself stands
    w.update(alive=["a"])  # does not hang: delivery resumes with the next change
    assert fired == [1, 2] and [n.epoch for _, n in events] == [1, 2]
