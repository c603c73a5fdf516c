"""The register linearizability checker must accept real orders and reject impossible ones."""

from __future__ import annotations

import math

from chaos.linearizability import CAS, READ, WRITE, RegOp, check_key, prune

INF = math.inf


def w(i: int, v: object, a: float, b: float = INF) -> RegOp:
    return RegOp(i, WRITE, v, a, b)


def r(i: int, v: object, a: float, b: float) -> RegOp:
    return RegOp(i, READ, v, a, b)


def test_sequential_history_is_linearizable() -> None:
    ops = [r(0, None, 0, 1), w(1, "a", 2, 3), r(2, "a", 4, 5), w(3, "b", 6, 7), r(4, "b", 8, 9)]
    assert check_key("k", ops).linearizable is True


def test_stale_read_after_a_completed_write_is_flagged() -> None:
    ops = [w(0, "a", 0, 1), w(1, "b", 2, 3), r(2, "a", 4, 5)]
    res = check_key("k", ops)
    assert res.linearizable is False
    assert res.stuck_at is not None and res.stuck_at.id == 2


def test_read_concurrent_with_a_write_may_see_either_value() -> None:
    for seen in ("a", "b"):
        ops = [w(0, "a", 0, 1), w(1, "b", 2, 6), r(2, seen, 3, 4)]
        assert check_key("k", ops).linearizable is True


def test_two_reads_may_not_disagree_on_the_order_of_writes() -> None:
    # Both writes overlap both reads, but once a read saw b after a, a later
    # read that starts after it ended cannot see a again.
    ops = [w(0, "a", 0, 10), w(1, "b", 0, 10), r(2, "a", 1, 2), r(3, "b", 3, 4), r(4, "a", 5, 6)]
    assert check_key("k", ops).linearizable is False


def test_unknown_write_may_take_effect_late() -> None:
    ops = [w(0, "a", 0, 1), w(1, "b", 2), r(2, "a", 3, 4), r(3, "b", 10, 11)]
    assert check_key("k", ops).linearizable is True


def test_unknown_write_cannot_take_effect_twice() -> None:
    ops = [w(0, "a", 0, 1), w(1, "b", 2), r(2, "b", 3, 4), w(3, "c", 5, 6), r(4, "b", 7, 8)]
    assert check_key("k", ops).linearizable is False


def test_read_of_a_value_never_written_is_flagged() -> None:
    assert check_key("k", [w(0, "a", 0, 1), r(1, "zzz", 2, 3)]).linearizable is False


def test_read_before_any_write_sees_the_initial_value() -> None:
    assert check_key("k", [r(0, None, 0, 1), w(1, "a", 2, 3)]).linearizable is True
    assert check_key("k", [w(1, "a", 0, 1), r(0, None, 2, 3)]).linearizable is False


def test_unobserved_unknown_writes_are_pruned() -> None:
    ops = [w(0, "a", 0, 1), w(1, "ghost", 2), w(2, "seen", 3), r(3, "seen", 5, 6)]
    assert [o.id for o in prune(ops)] == [0, 2, 3]


def test_cas_model() -> None:
    ok = [w(0, "a", 0, 1), RegOp(1, CAS, ("a", "b"), 2, 3, ok=True), r(2, "b", 4, 5)]
    assert check_key("k", ok).linearizable is True
    bad = [w(0, "a", 0, 1), RegOp(1, CAS, ("x", "b"), 2, 3, ok=True)]
    assert check_key("k", bad).linearizable is False
    failed = [w(0, "a", 0, 1), RegOp(1, CAS, ("a", "b"), 2, 3, ok=False)]
    assert check_key("k", failed).linearizable is False


def test_step_bound_is_inconclusive_not_an_anomaly() -> None:
    ops = [w(i, f"v{i}", 0, 100) for i in range(12)] + [r(12, "v3", 50, 60)]
    res = check_key("k", ops, max_steps=5)
    assert res.linearizable is None


def test_large_concurrent_history_is_fast() -> None:
    # 400 ops from 8 overlapping clients: memoisation keeps this well below the bound.
    ops = []
    t = 0.0
    last = None
    for i in range(400):
        if i % 2 == 0:
            ops.append(w(i, f"v{i}", t, t + 0.35))
            last = f"v{i}"
        else:
            ops.append(r(i, last, t + 0.4, t + 0.5))
        t += 0.3
    res = check_key("k", ops)
    assert res.linearizable is True
    assert res.steps < 200_000
