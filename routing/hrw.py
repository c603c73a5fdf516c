"""Rendezvous (HRW) hashing exactly as ARCHITECTURE.md "Routing" specifies.

score = first 8 bytes, big-endian, of sha256(org 0 ns 0 tq 0 seed 0 candidate);
the smallest score wins, and ranking all candidates gives the fallback order.
Adding or removing one candidate moves only about 1/N of the keys.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable

PARTITION_CACHE_SIZE = 65536
"""Shards whose HRW partition ``partition_of`` remembers (least recently used go first)."""


def score(org: str, ns: str, tq: str, seed: str, candidate: str) -> int:
    data = b"\x00".join(x.encode() for x in (org, ns, tq, seed, candidate))
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "big")


def rank(org: str, ns: str, tq: str, seed: str, candidates: Iterable[str]) -> list[str]:
    """Candidates best first (ties broken by the candidate itself)."""
    return sorted(candidates, key=lambda c: (score(org, ns, tq, seed, c), c))


def winner(org: str, ns: str, tq: str, seed: str, candidates: Iterable[str]) -> str:
    best = None
    best_key: tuple[int, str] | None = None
    for c in candidates:
        key = (score(org, ns, tq, seed, c), c)
        if best_key is None or key < best_key:
            best, best_key = c, key
    if best is None:
        raise ValueError("no candidates")
    return best


@functools.lru_cache(maxsize=PARTITION_CACHE_SIZE)
def partition_of(org: str, ns: str, seed: str, partitions: int) -> int:
    """The HRW partition of a shard, each partition id taking part as its decimal string.

    A pure function of its arguments, so it is computed once per shard and
    partition count and then remembered: it costs one sha256 per partition and
    every request routes through it (several times per request). A migration's
    pin overrides it without touching this cache (``ServiceCore.partition``).
    """
    if partitions <= 1:
        return 0
    return int(winner(org, ns, "", seed, (str(p) for p in range(partitions))))
