"""The file-descriptor budget of a node's client listeners.

Every accepted connection costs a file descriptor. When the process reaches
its ``RLIMIT_NOFILE``, ``accept()`` fails for every listener at once (HTTP,
ZAP and the peer port), asyncio stops accepting for a second at a time and
logs an error each time, and LMDB or the Raft journal may fail to open a file:
a flood of idle HTTP connections then locks out workers and peers too. So the
connection caps of HTTP and ZAP are made to fit in the limit, with room left
for storage, the peer port and the process itself: the process first raises
its soft limit to the hard one (what the kernel lets it use anyway), and when
the configured caps still do not fit, both are scaled down in proportion and a
warning says so. A refused connection then gets an answer (503 on HTTP)
instead of the whole node failing to accept.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("hanzo_tasks.listeners")

SOFT_LIMIT_CEILING = 1 << 20
"""The soft limit is raised at most to this (a hard limit of "unlimited" is not taken literally)."""
MIN_RESERVE = 64
"""Descriptors never given to client connections: logs, sockets of the loop, the listeners."""
PER_PARTITION = 4
"""Descriptors a partition may keep open: LMDB data and lock files, journal, snapshot."""


@dataclass(frozen=True)
class ConnectionCaps:
    """The caps the listeners enforce: configured, or scaled to fit the fd limit."""

    http: int
    zap: int
    nofile: int
    """The soft RLIMIT_NOFILE after raising it (0 when unknown: no budget applied)."""


def raise_nofile() -> int:
    """Raise the soft fd limit to the hard one (bounded); return the soft limit now in force."""
    try:
        import resource
    except ImportError:  # not POSIX: no budget
        return 0
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (OSError, ValueError):
        return 0
    want = SOFT_LIMIT_CEILING if hard == resource.RLIM_INFINITY else min(hard, SOFT_LIMIT_CEILING)
    if soft == resource.RLIM_INFINITY:
        return SOFT_LIMIT_CEILING
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (OSError, ValueError):
            pass
    return soft


def fit(http: int, zap: int, nofile: int, partitions: int) -> tuple[int, int]:
    """Scale the two caps down in proportion so their sum leaves the reserve free.

    A cap of 0 ("no cap") counts as the whole budget, so it too is bounded.
    """
    if nofile <= 0:
        return http, zap
    reserve = max(MIN_RESERVE + PER_PARTITION * partitions, nofile // 8)
    budget = max(2, nofile - reserve)
    h = http or budget
    z = zap or budget
    if h + z <= budget:
        return h, z
    h2 = max(1, budget * h // (h + z))
    return h2, max(1, budget - h2)


@functools.lru_cache(maxsize=16)
def connection_caps(cfg: Any) -> ConnectionCaps:
    """The caps for a node with config ``cfg``: ``listeners.http_max_connections`` and
    ``limits.max_zap_connections``, fitted into the (raised) fd limit. Computed (and
    warned about) once per config, though both listeners ask."""
    nofile = raise_nofile()
    http, zap = cfg.listeners.http_max_connections, cfg.limits.max_zap_connections
    parts = cfg.partitions if cfg.replicator == "raft" else 1
    h, z = fit(http, zap, nofile, parts + 1)
    if (h, z) != (http or h, zap):
        log.warning(
            "the fd limit is %d: client connections capped at %d HTTP and %d ZAP "
            "(configured %s and %d); raise the limit (ulimit -n) to allow more",
            nofile, h, z, http or "no cap", zap,
        )
    return ConnectionCaps(h, z, nofile)


__all__ = ["ConnectionCaps", "connection_caps", "fit", "raise_nofile"]
