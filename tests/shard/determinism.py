"""The two properties every state-machine test suite checks on its own command
streams (ARCHITECTURE.md "Determinism"), on real LMDB in a temporary directory."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

from hanzo_tasks.shard import PartitionStore, StateMachine, encode


def fresh(tmp: str, name: str) -> StateMachine:
    return StateMachine(PartitionStore(f"{tmp}/{name}", map_size=1 << 20, sync=False))


def assert_identical_replicas(stream: list[dict[str, Any]], split: int, *,
                              malformed: Callable[[dict[str, Any]], bool] = lambda c: False) -> None:
    """One replica applies entry by entry, another in group commits of ``split``:
    the same results, the same bytes, the same applied index; and no handler
    raised (``internal``), except on the commands a stream makes ``malformed``
    on purpose (no proposer makes them)."""
    entries = [(i + 1, encode(c)) for i, c in enumerate(stream)]
    with tempfile.TemporaryDirectory() as tmp:
        a, b = fresh(tmp, "a"), fresh(tmp, "b")
        ra = [a.apply(i, data) for i, data in entries]
        rb: list[Any] = []
        for k in range(0, len(entries), split):
            rb.extend(b.apply_batch(entries[k : k + split]))
        plain = [[dict(r) if r is not None else None for r in rs] for rs in (ra, rb)]
        assert plain[0] == plain[1]
        raised = [c for c, r in zip(stream, ra, strict=True) if r is not None and r.get("code") == "internal"]
        assert all(malformed(c) for c in raised), f"a handler raised on {raised[0]}" if raised else ""
        assert a.store.content_hash() == b.store.content_hash()
        assert a.store.applied_index() == len(entries)


def assert_prefix_replay_changes_nothing(stream: list[dict[str, Any]], cut: int) -> None:
    """A journal replayed after a crash: the applied prefix again is a no-op, and
    the rest then ends where a replica that never crashed ends."""
    entries = [(i + 1, encode(c)) for i, c in enumerate(stream)]
    prefix = entries[: min(cut, len(entries))]
    with tempfile.TemporaryDirectory() as tmp:
        once, twice = fresh(tmp, "once"), fresh(tmp, "twice")
        once.apply_batch(entries)
        twice.apply_batch(prefix)
        before = twice.store.content_hash()
        assert all(r is None for r in twice.apply_batch(prefix)), "an applied index applied again"
        assert twice.store.content_hash() == before
        twice.apply_batch(entries)
        assert twice.store.content_hash() == once.store.content_hash()
