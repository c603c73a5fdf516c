"""A real three-node Raft cluster of ``tasksd`` processes on loopback."""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

from hanzo_tasks.shard import PartitionStore

from tests.support import NodeProcess


def free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Cluster:
    def __init__(
        self, root: Path, n: int = 3, partitions: int = 4, secret: bytes | None = None,
        extra: list[str] | None = None,
    ) -> None:
        self.root = root
        self.partitions = partitions
        self.secret_file = root / "cluster.secret"
        root.mkdir(parents=True, exist_ok=True)
        self.secret_file.write_bytes(secret or secrets.token_hex(32).encode())
        ports = free_ports(n)
        self.ids = [f"n{i + 1}" for i in range(n)]
        self.peer_addrs = {nid: f"127.0.0.1:{p}" for nid, p in zip(self.ids, ports, strict=True)}
        peers = ",".join(f"{k}={v}" for k, v in self.peer_addrs.items())
        self.nodes: dict[str, NodeProcess] = {}
        for nid in self.ids:
            args = [
                "--node-id", nid, "--replicator", "raft", "--peers", peers,
                "--peer", self.peer_addrs[nid], "--cluster-secret-file", str(self.secret_file),
                "--partitions", str(partitions),
                "--raft-election-timeout", "300ms", "--raft-heartbeat-interval", "50ms",
                "--storage-reserve-disk", "0", "--zap", "127.0.0.1:0",
                *(extra or []),
            ]
            self.nodes[nid] = NodeProcess(root / nid, args)

    def start(self, timeout: float = 60.0) -> Cluster:
        for n in self.nodes.values():
            n.start(timeout=timeout, ready=False)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 60.0, nodes: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout
        pending = list(nodes or self.nodes)
        while pending and time.monotonic() < deadline:
            pending = [nid for nid in pending if self.nodes[nid].get("/readyz")[0] != 200]
            time.sleep(0.1)
        if pending:
            raise TimeoutError(f"not ready: {pending}")

    def leader_of(self, group: int) -> str | None:
        for n in self.nodes.values():
            if n.proc is None:
                continue
            status, body = n.get("/v1/tasks/cluster")
            if status == 200:
                for p in body["partitions"]:
                    if p["id"] == group and p["leader"]:
                        return p["leader"]
        return None

    def meta_leader(self) -> str | None:
        for n in self.nodes.values():
            if n.proc is None:
                continue
            status, body = n.get("/v1/tasks/cluster")
            if status == 200 and body["metaLeader"]:
                return body["metaLeader"]
        return None

    def zap_addr(self, nid: str) -> tuple[str, int]:
        import re

        found = re.findall(r"serving http=\S+ zap=(\S+)", self.nodes[nid].log())
        assert found, self.nodes[nid].log()
        host, port = found[-1].rsplit(":", 1)
        return host, int(port)

    def kill_all(self) -> None:
        for n in self.nodes.values():
            n.kill()

    def content_hashes(self) -> dict[str, dict[str, str]]:
        """Per partition, per node: sha256 of the shard keys and the registry (nodes stopped)."""
        out: dict[str, dict[str, str]] = {}
        for nid in self.ids:
            for p in range(self.partitions):
                store = PartitionStore(self.root / nid / "partitions" / str(p), sync=False)
                try:
                    h = store.content_hash(b"s") + store.content_hash(b"\x01reg")
                finally:
                    store.close()
                out.setdefault(str(p), {})[nid] = h
        return out
