"""Loopback ports that stay ours across node restarts.

Nodes are restarted on the same ports (clients and proxies keep their
addresses), so a port must not be handed to somebody else while its node is
down. The kernel gives port-0 listeners and outgoing connections ports from
the ephemeral range only, so ports picked *below* that range cannot be taken
by another test that binds port 0 in the meantime.
"""

from __future__ import annotations

import random
import socket
import threading

_FALLBACK_RANGE = (32768, 60999)
_LOW = 20000
_taken: set[int] = set()
_lock = threading.Lock()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux), or the usual default."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
        return lo, hi
    except (OSError, ValueError):
        return _FALLBACK_RANGE


def _bindable(port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def pick_ports(n: int) -> list[int]:
    """``n`` distinct free loopback ports below the ephemeral range.

    Uses its own randomness (not the run's seed): ports are not part of what a
    seed reproduces, and two concurrent runs must not pick the same ones.
    """
    lo_eph, _ = ephemeral_range()
    hi = max(_LOW + 1000, lo_eph)
    rnd = random.SystemRandom()
    out: list[int] = []
    with _lock:
        for _ in range(50 * n + 100):
            if len(out) == n:
                break
            port = rnd.randrange(_LOW, hi)
            if port in _taken or port in out or not _bindable(port):
                continue
            out.append(port)
        if len(out) < n:
            raise RuntimeError(f"could not find {n} free ports in {_LOW}..{hi}")
        _taken.update(out)
    return out


def release(ports: list[int]) -> None:
    """Let this process pick these ports again (after their cluster is gone)."""
    with _lock:
        _taken.difference_update(ports)
