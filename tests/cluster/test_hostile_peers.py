"""Silent strangers on the peer ports of a real cluster (issue 16, finding 8).

Three ``tasksd`` processes. Strangers hold 140 silent TCP connections on the
peer ports of n1 and n2, from 20 loopback addresses (7 each, under the
per-address cap of 8, so together they fill every one of the 128 handshake
slots), and open a new one whenever the node drops one: the attack is kept up
for the whole restart. n3 is killed (SIGKILL) and started again; it must
rejoin at once: its ``/readyz`` answers 200, and a write through it succeeds,
within a few seconds of its HTTP port opening.

Before the handshake slots made room for newcomers, n3's dials were refused
until the strangers' 5 s handshake deadline freed slots: about 6 s of 503s
from ``/readyz``, which the bound below does not allow.
"""

from __future__ import annotations

import re
import select
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.raft_support import Cluster

pytestmark = pytest.mark.timeout(120)

STRANGERS = 140
ADDRESSES = 20  # 7 connections each: under the per-address cap, over the total cap together
REJOIN_BOUND = 3.0
"""Seconds from n3's HTTP port opening to a write through it (the old code: about 6)."""


class SilentFlood:
    """Keeps ``STRANGERS`` silent connections open on each of ``targets`` from a
    background thread, replacing each one the node closes (evicted or timed out)."""

    def __init__(self, targets: list[tuple[str, int]]) -> None:
        self.targets = targets
        self.socks: dict[socket.socket, tuple[tuple[str, int], str]] = {}
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silent-flood", daemon=True)

    def _open(self, target: tuple[str, int], source: str) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((source, 0))
            s.settimeout(2.0)
            s.connect(target)
        except OSError:
            s.close()
            return
        s.setblocking(False)
        self.socks[s] = (target, source)

    def __enter__(self) -> SilentFlood:
        for target in self.targets:
            for i in range(STRANGERS):
                self._open(target, f"127.0.1.{1 + i % ADDRESSES}")
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select(list(self.socks), [], [], 0.05)
            for s in readable:
                try:
                    gone = not s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    gone = False
                except OSError:
                    gone = True
                if gone:
                    target, source = self.socks.pop(s)
                    s.close()
                    self._open(target, source)
                    self.reopened += 1

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()
        self.socks.clear()


def peer_target(cluster: Cluster, nid: str) -> tuple[str, int]:
    host, port = cluster.peer_addrs[nid].rsplit(":", 1)
    return host, int(port)


def restart_and_time(cluster: Cluster, nid: str) -> tuple[float, float]:
    """SIGKILL and start ``nid``; (seconds of /readyz not 200, seconds to a
    successful write), both counted from its HTTP port opening."""
    node = cluster.nodes[nid]
    node.kill(signal.SIGKILL)
    node.start(ready=False)
    serving = time.monotonic()
    while node.get("/readyz", timeout=2.0)[0] != 200:
        assert time.monotonic() - serving < 30, "n3 never became ready"
        time.sleep(0.02)
    ready = time.monotonic() - serving
    wid = f"after-restart-{time.monotonic_ns()}"
    body = {"workflowId": wid, "requestId": f"req-{wid}", "workflowType": {"name": "T"}}
    while True:
        assert time.monotonic() - serving < 30, "no write through n3"
        try:  # a client retries a write that timed out, with the same requestId
            status, answer = node.post("/v1/tasks/namespaces/default/workflows", body, timeout=5.0)
        except TimeoutError:
            continue
        if status == 200:
            break
        assert status == 503, answer
        time.sleep(0.02)
    return ready, time.monotonic() - serving


def test_a_restarting_node_rejoins_at_once_through_silent_peer_floods(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "c", n=3, partitions=4)
    try:
        cluster.start()
        baseline = restart_and_time(cluster, "n3")
        with SilentFlood([peer_target(cluster, "n1"), peer_target(cluster, "n2")]) as flood:
            time.sleep(0.5)  # every slot of n1 and n2 is held, oldest ones being replaced
            attacked = restart_and_time(cluster, "n3")
            reopened = flood.reopened
        print(f"\nrejoin without strangers: ready {baseline[0]:.2f}s, write {baseline[1]:.2f}s; "
              f"with {STRANGERS} silent per node: ready {attacked[0]:.2f}s, write {attacked[1]:.2f}s "
              f"({reopened} stranger connections dropped and reopened)")
        assert reopened > 0, "the strangers never took the slots (no eviction happened)"
        assert attacked[1] < REJOIN_BOUND, f"rejoin under the flood took {attacked}"
        for nid in ("n1", "n2"):
            status, text = cluster.nodes[nid].get("/metrics")
            assert status == 200
            m = re.search(r'tasks_connection_limits_total{listener="peer",reason="handshake_evicted"} (\S+)',
                          str(text))
            assert m and float(m.group(1)) > 0, f"{nid} evicted no stranger"
    finally:
        cluster.kill_all()
