"""A timeline of what the cluster says about itself while faults are injected.

Once a second: who leads the meta group and each partition (from the newest
term any node reports), and each node's ``/v1/tasks/cluster/health`` verdict.
Only changes are kept. It is evidence that a fault actually bit (leaders
moved, the isolated node saw no quorum), and the first thing to read when a
check fails; no check depends on it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from chaos.history import History
from chaos.testbed import Testbed


def _health_word(body: dict[str, Any] | None) -> str:
    if body is None:
        return "down"
    if body.get("status") == "ok":
        return "ok"
    reasons = body.get("reasons") or []
    kinds = sorted({r.get("reason", "?") for r in reasons if isinstance(r, dict)})
    return f"degraded({','.join(kinds)}:{len(reasons)})"


async def sample(tb: Testbed) -> dict[str, Any]:
    meta, leaders = await tb.leaders()
    healths = await asyncio.gather(*(tb.health(n) for n in tb.nodes))
    return {
        "meta": meta,
        "leaders": {str(p): leaders.get(p) for p in range(tb.partitions)},
        "health": {n.node_id: ("paused" if n.paused else _health_word(h)) for n, h in zip(tb.nodes, healths,
                                                                                          strict=True)},
    }


async def watch(tb: Testbed, history: History, stop: asyncio.Event, out: list[dict[str, Any]],
                every: float = 1.0) -> None:
    """Append a sample to ``out`` whenever it differs from the previous one, until ``stop``.

    ``t`` is the history's clock (seconds since the run began), like the
    operations' and the faults' times.
    """
    last: dict[str, Any] | None = None
    while not stop.is_set():
        tb.reap()  # notice a node that died on its own as soon as it happens
        try:
            t = history.now()
            s = await asyncio.wait_for(sample(tb), 10.0)
        except Exception:  # a node mid-restart: try again next tick
            s = None
        if s is not None and s != last:
            out.append({"t": round(t, 2), **s})
            last = s
        try:
            await asyncio.wait_for(stop.wait(), every)
        except TimeoutError:
            pass
