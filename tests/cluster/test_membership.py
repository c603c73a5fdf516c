"""A node joins a running cluster, and another leaves it (real processes)."""

from __future__ import annotations

import time
from pathlib import Path

from tests.cluster.raft_support import Cluster, free_ports
from tests.cluster.test_raft_cluster import start_acked, wait_visible
from tests.support import NodeProcess


def members(node: NodeProcess) -> dict[str, str]:
    status, body = node.get("/v1/tasks/cluster")
    assert status == 200, body
    return {m["nodeId"]: m["state"] for m in body["members"]}


def test_join_then_leave(tmp_path: Path) -> None:
    c = Cluster(tmp_path / "c", n=3, partitions=4)
    c.start()
    n4 = None
    try:
        n1, n2, n3 = (c.nodes[i] for i in ("n1", "n2", "n3"))
        for i in range(20):
            start_acked([n1, n2, n3], "default", f"before-{i}")

        # Join: record n4, then start it (it learns the meta group, then gets a vote there).
        (port,) = free_ports(1)
        addr = f"127.0.0.1:{port}"
        status, body = n2.post("/v1/tasks/cluster/members", {"nodeId": "n4", "peer": addr}, timeout=60)
        assert status == 200, body
        assert body["members"] == ["n1", "n2", "n3", "n4"]
        peers = ",".join(f"{k}={v}" for k, v in {**c.peer_addrs, "n4": addr}.items())
        args = list(c.nodes["n1"].args)
        args[args.index("--node-id") + 1] = "n4"
        args[args.index("--peers") + 1] = peers
        args[args.index("--peer") + 1] = addr
        n4 = NodeProcess(tmp_path / "c" / "n4", args).start(ready=True, timeout=60)
        for i in (0, 19):
            assert wait_visible(n4, "default", f"before-{i}", 20), "the new node did not catch up"
        start_acked([n4], "default", "via-n4")
        assert wait_visible(n1, "default", "via-n4")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and set(members(n1).values()) != {"alive"}:
            time.sleep(0.2)
        assert members(n1) == {"n1": "alive", "n2": "alive", "n3": "alive", "n4": "alive"}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(m["voter"] for m in n1.get("/v1/tasks/cluster")[1]["members"]):
            time.sleep(0.2)
        assert all(m["voter"] for m in n1.get("/v1/tasks/cluster")[1]["members"]), "n4 got no meta vote"
        # Replicas spread onto the new node (4 partitions x 3 replicas over 4 nodes: 3 each).
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status, info = n1.get("/v1/tasks/cluster")
            held = {m: sum(m in p["replicas"] for p in info["partitions"]) for m in ("n1", "n2", "n3", "n4")}
            if held == {"n1": 3, "n2": 3, "n3": 3, "n4": 3}:
                break
            time.sleep(0.5)
        assert held == {"n1": 3, "n2": 3, "n3": 3, "n4": 3}, held
        for i in (0, 19):
            assert wait_visible(n4, "default", f"before-{i}", 20)

        # Leave: another member removes n2 (n2 hands its leaderships over), then n2 stops.
        status, body, _ = n1.request("DELETE", "/v1/tasks/cluster/members/n2", timeout=60)
        assert status == 200 and body["status"] == "removed", body
        assert body["members"] == ["n1", "n3", "n4"]
        n2.stop()
        assert set(members(n1)) == {"n1", "n3", "n4"}
        start_acked([n1, n3, n4], "default", "after-leave")
        # Majority of three voters: one more failure is still survivable.
        c.nodes["n3"].kill()
        start_acked([n1, n4], "default", "after-leave-and-kill", timeout=30)
        assert wait_visible(n4, "default", "after-leave-and-kill")
    finally:
        if n4 is not None:
            n4.kill()
        c.kill_all()
