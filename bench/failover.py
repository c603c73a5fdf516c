"""Failover time and write/read latency of a 3-node cluster (not a test: prints figures).

    python -m bench.failover [--kills 5] [--ops 300]

Starts three real ``tasksd`` processes with the server's default Raft timings
(500 ms election timeout, 100 ms heartbeat, durability sync), then:

1. single-client latency of a workflow start (write) and a linearizable list
   (read: a barrier through the leader), through the partition leader and
   through a follower;
2. failover: SIGKILL the leader of the ``default`` namespace's partition and
   time until the first acknowledged write on a surviving node; the killed node
   is restarted between rounds.
"""

from __future__ import annotations

import argparse
import json
import secrets
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from hanzo_tasks.routing import partition_of

from bench.cluster import READY_TIMEOUT, Settings, System, get_json

WF = "/v1/tasks/namespaces/default/workflows"
PARTITIONS = 16


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def call(url: str, method: str, path: str, body: Any = None, timeout: float = 10.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


def leader_of(system: System, group: int) -> str | None:
    for n in system.nodes:
        if n.proc is None or n.proc.poll() is not None:
            continue
        try:
            body = get_json(n.url + "/v1/tasks/cluster")
        except (OSError, ValueError):
            continue
        for p in body["partitions"]:
            if p["id"] == group and p["leader"]:
                return p["leader"]
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--ops", type=int, default=300)
    args = ap.parse_args(argv)
    settings = Settings(schedules=0, namespaces=0, duration=0, grace=0.0, idle_settle=0.0, idle_window=0.0,
                        durability="sync", partitions=PARTITIONS, nodes=3, tmp_parent=None, keep=False)
    with tempfile.TemporaryDirectory() as tmp:
        secret = Path(tmp) / "cluster.secret"
        secret.write_text(secrets.token_hex(32))
        c = System("cluster", Path(tmp) / "c", settings, secret)  # server-default Raft timings
        c.launch()
        c.wait_ready(time.monotonic() + READY_TIMEOUT)
        nodes = {n.name: n for n in c.nodes}
        try:
            time.sleep(3)  # leadership balancing settles
            group = partition_of("_", "default", "tasks", PARTITIONS)
            leader = leader_of(c, group)
            follower = next(n for name, n in nodes.items() if name != leader)
            for label, node in (("leader", nodes[str(leader)]), ("follower", follower)):
                w, r = [], []
                for i in range(args.ops):
                    t0 = time.perf_counter()
                    status, body = call(node.url, "POST", WF,
                                        {"workflowType": {"name": "L"}, "requestId": f"{label}-{i}"})
                    w.append((time.perf_counter() - t0) * 1000)
                    assert status == 200, body
                    t0 = time.perf_counter()
                    call(node.url, "GET", f"{WF}?pageSize=1")
                    r.append((time.perf_counter() - t0) * 1000)
                print(f"via {label:8s} write p50 {pct(w, .5):6.2f} ms  p99 {pct(w, .99):6.2f} ms   "
                      f"read p50 {pct(r, .5):6.2f} ms  p99 {pct(r, .99):6.2f} ms")
            times = []
            for k in range(args.kills):
                time.sleep(2.0)
                victim = nodes[str(leader_of(c, group))]
                others = [n for n in c.nodes if n is not victim]
                assert victim.proc is not None
                victim.proc.send_signal(signal.SIGKILL)
                victim.proc.wait(30)
                t0 = time.monotonic()
                i = 0
                while True:
                    i += 1
                    try:
                        status, _ = call(others[i % 2].url, "POST", WF,
                                         {"workflowType": {"name": "F"}, "requestId": f"fo-{k}-{i}"}, timeout=5)
                    except OSError:
                        status = 0
                    if status == 200:
                        break
                    time.sleep(0.01)
                times.append(time.monotonic() - t0)
                victim.launch()
                c.wait_ready(time.monotonic() + READY_TIMEOUT)
            print("failover (SIGKILL of the leader -> first acknowledged write), s:",
                  ", ".join(f"{t:.3f}" for t in times), f"| median {statistics.median(times):.3f}")
        finally:
            c.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
