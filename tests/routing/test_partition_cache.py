"""``partition_of`` remembers each shard's HRW partition (issue 14: it was 16
sha256 per call, several calls per request, ~10 % of a partition leader's CPU)."""

from __future__ import annotations

import itertools

import pytest
from hanzo_tasks.routing import hrw, partition_of

SEED = "tasks"


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Every HRW score computed from here on, as its (org, ns, tq, seed, candidate)."""
    seen: list[tuple[str, ...]] = []
    real = hrw.score

    def counting(org: str, ns: str, tq: str, seed: str, candidate: str) -> int:
        seen.append((org, ns, tq, seed, candidate))
        return real(org, ns, tq, seed, candidate)

    monkeypatch.setattr(hrw, "score", counting)
    partition_of.cache_clear()
    return seen


def test_a_shard_is_hashed_once_however_often_it_is_routed(hashes: list[tuple[str, ...]]) -> None:
    first = partition_of("acme", "orders", SEED, 16)
    assert len(hashes) == 16  # one score per partition, the first time
    for _ in range(100):
        assert partition_of("acme", "orders", SEED, 16) == first
    assert len(hashes) == 16


def test_each_input_is_its_own_entry(hashes: list[tuple[str, ...]]) -> None:
    """Org, namespace, seed and partition count all take part in the key."""
    inputs = [("acme", "orders", SEED, 16), ("acme", "orders", SEED, 32), ("acme", "orders", "other", 16),
              ("other", "orders", SEED, 16), ("acme", "billing", SEED, 16)]
    got = [partition_of(*i) for i in inputs]
    assert got == [partition_of.__wrapped__(*i) for i in inputs]  # the uncached computation
    assert len(hashes) == 2 * (16 + 32 + 16 + 16 + 16)  # the check above hashed them again


def test_the_cache_is_bounded() -> None:
    assert partition_of.cache_info().maxsize == hrw.PARTITION_CACHE_SIZE == 65536


def test_cached_answers_equal_the_computation() -> None:
    partition_of.cache_clear()
    for org, n, p in itertools.product(("_", "acme"), range(200), (1, 2, 7, 16)):
        ns = f"ns{n}"
        assert partition_of(org, ns, SEED, p) == partition_of.__wrapped__(org, ns, SEED, p)
        assert partition_of(org, ns, SEED, p) == partition_of.__wrapped__(org, ns, SEED, p)
