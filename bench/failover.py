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
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from routing import partition_of
from tests.cluster.raft_support import Cluster

WF = "/v1/tasks/namespaces/default/workflows"


def default_timings(c: Cluster) -> None:
    for n in c.nodes.values():
        for flag in ("--raft-election-timeout", "--raft-heartbeat-interval"):
            i = n.args.index(flag)
            del n.args[i : i + 2]


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=5)
    ap.add_argument("--ops", type=int, default=300)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        c = Cluster(Path(tmp) / "c", n=3, partitions=16)
        default_timings(c)
        c.start()
        try:
            time.sleep(3)  # leadership balancing settles
            group = partition_of("_", "default", "tasks", 16)
            leader = c.leader_of(group)
            follower = next(n for nid, n in c.nodes.items() if nid != leader)
            for label, node in (("leader", c.nodes[leader]), ("follower", follower)):
                w, r = [], []
                for i in range(args.ops):
                    t0 = time.perf_counter()
                    status, body = node.post(WF, {"workflowType": {"name": "L"}, "requestId": f"{label}-{i}"})
                    w.append((time.perf_counter() - t0) * 1000)
                    assert status == 200, body
                    t0 = time.perf_counter()
                    node.get(f"{WF}?pageSize=1")
                    r.append((time.perf_counter() - t0) * 1000)
                print(f"via {label:8s} write p50 {pct(w, .5):6.2f} ms  p99 {pct(w, .99):6.2f} ms   "
                      f"read p50 {pct(r, .5):6.2f} ms  p99 {pct(r, .99):6.2f} ms")
            times = []
            for k in range(args.kills):
                time.sleep(2.0)
                victim = c.leader_of(group)
                others = [n for nid, n in c.nodes.items() if nid != victim]
                c.nodes[victim].kill(signal.SIGKILL)
                t0 = time.monotonic()
                i = 0
                while True:
                    i += 1
                    try:
                        status, _ = others[i % 2].post(WF, {"workflowType": {"name": "F"}, "requestId": f"fo-{k}-{i}"},
                                                       timeout=5)
                    except OSError:
                        status = 0
                    if status == 200:
                        break
                    time.sleep(0.01)
                times.append(time.monotonic() - t0)
                c.nodes[victim].start(ready=False)
                c.wait_ready()
            print("failover (SIGKILL of the leader -> first acknowledged write), s:",
                  ", ".join(f"{t:.3f}" for t in times), f"| median {statistics.median(times):.3f}")
        finally:
            c.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
