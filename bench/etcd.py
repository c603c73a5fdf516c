"""Three etcd members on loopback, the anchor of the throughput benchmark.

Why etcd: it is a mature Raft key-value store that fsyncs every batch of
entries, like a ``durability: sync`` node, so "ops/s and CPU per op of etcd
on the same box, under the same load generator" says how far the replicated
write path is from a well-tuned one. The members get the same Raft timings as
the server's defaults (100 ms heartbeat, 500 ms election timeout), fresh data
dirs under the caller's temp dir, free loopback ports, and die with the
benchmark (``PR_SET_PDEATHSIG``). Clients talk to etcd's HTTP/JSON gateway
(``/v3/...``, base64 keys and values), the HTTP twin of its gRPC API.

Nothing is installed here: when no ``etcd`` binary is on PATH, ``find_etcd``
returns None and the caller says so.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from bench.cluster import free_ports
from bench.single_node import STOP_SECONDS, _die_with_parent

HEARTBEAT_MS = 100
ELECTION_MS = 500
NOT_FOUND = "etcd not found: install etcd-server (Debian) to get the anchor row"


def find_etcd() -> str | None:
    return shutil.which("etcd")


def etcd_version(binary: str) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.splitlines()[0].removeprefix("etcd Version: ").strip()
    return "?"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class EtcdMember:
    def __init__(self, name: str, data_dir: Path, client_port: int, peer_port: int) -> None:
        self.name = name
        self.data_dir = data_dir
        self.client_port = client_port
        self.peer_port = peer_port
        self.log_path = data_dir.parent / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.member_id = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def launch(self, binary: str, initial_cluster: str) -> None:
        cmd = [
            binary, "--name", self.name, "--data-dir", str(self.data_dir),
            "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
            "--listen-peer-urls", self.peer_url, "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", "tasks-bench",
            "--heartbeat-interval", str(HEARTBEAT_MS), "--election-timeout", str(ELECTION_MS),
            "--logger", "zap", "--log-level", "warn",
        ]
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def post(self, path: str, body: dict[str, object], timeout: float = 5.0) -> dict[str, object]:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())


class EtcdCluster:
    """Three members, started together; ``leader()`` is the member to send writes to."""

    def __init__(self, binary: str, root: Path, members: int = 3) -> None:
        self.binary = binary
        ports = free_ports(2 * members)
        self.members = [EtcdMember(f"e{i + 1}", root / f"e{i + 1}", ports[2 * i], ports[2 * i + 1])
                        for i in range(members)]

    def launch(self) -> None:
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.launch(self.binary, initial)

    def wait_ready(self, timeout: float = 60.0) -> EtcdMember:
        """Wait until a leader is elected and a put commits; return the leader."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for m in self.members:
                if m.proc is not None and m.proc.poll() is not None:
                    raise RuntimeError(f"etcd {m.name} exited with {m.proc.returncode}:\n{m.log_tail()}")
            try:
                leader = self.leader()
                leader.post("/v3/kv/put", {"key": b64(b"ready"), "value": b64(b"1")})
                return leader
            except (OSError, urllib.error.URLError, ValueError, KeyError, RuntimeError) as e:
                last = f"{type(e).__name__}: {e}"
            time.sleep(0.2)
        raise RuntimeError(f"etcd not ready in {timeout:g}s ({last}):\n{self.members[0].log_tail()}")

    def leader(self) -> EtcdMember:
        """The member every member's ``/v3/maintenance/status`` names as leader."""
        leader_id = ""
        for m in self.members:
            status = m.post("/v3/maintenance/status", {})
            header = status.get("header")
            assert isinstance(header, dict)
            m.member_id = str(header["member_id"])
            leader_id = str(status["leader"])
        for m in self.members:
            if m.member_id == leader_id and leader_id not in ("", "0"):
                return m
        raise RuntimeError(f"no etcd leader yet (leader id {leader_id!r})")

    def stop(self) -> dict[str, int | None]:
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + STOP_SECONDS
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    m.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proc.wait(5)
            codes[m.name] = m.proc.returncode
        return codes
