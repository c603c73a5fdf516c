"""Token buckets for namespace ``apsLimit`` (SPEC §4.1 "Rate limits").

The burst equals the limit. Buckets live in memory on the shard leader:
after a failover a namespace starts with a full bucket, which errs on the
side of serving.
"""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    def __init__(self) -> None:
        self._state: dict[Hashable, tuple[float, int]] = {}

    def take(self, key: Hashable, rate: float, now_ms: int) -> bool:
        """Take one token; False when the bucket is empty."""
        tokens, last = self._state.get(key, (float(rate), now_ms))
        tokens = min(float(rate), tokens + (now_ms - last) * rate / 1000.0)
        if tokens < 1.0:
            self._state[key] = (tokens, now_ms)
            return False
        self._state[key] = (tokens - 1.0, now_ms)
        return True
