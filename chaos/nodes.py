"""Real ``tasksd serve`` node processes for a chaos run.

Like ``tasksd dev-cluster`` (a cluster secret file, ids ``n1..nN``, data in
``<dir>/n<i>``, ``replicator: raft``, loopback), with two differences that the
faults need:

- fixed ports per node, kept across restarts (a killed node comes back where
  clients, workers and proxies expect it);
- the peer address every node advertises (and finds in ``peers``) is the
  node's proxy, not its real listener, so the harness can cut links.

Each node runs in its own session (process group), so the harness can signal
exactly the processes it started and nothing else, and kill them all in a
``finally``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import procs

#: Environment prefixes a node must not inherit from whoever runs the harness
#: (a developer's TASKSD_CONFIG, TASKS_CLOCK_SKEW_MS or HANZO_TASKS_FAULTS would change the run).
_SCRUB = ("TASKSD_", "TASKS_", "HANZO_TASKS_")


@dataclass
class NodeSpec:
    """Where one node lives: ids, ports, data directory."""

    node_id: str
    http_port: int
    zap_port: int
    peer_port: int  # the node's real peer listener
    proxy_port: int  # what the node advertises; the proxy forwards to peer_port
    data_dir: Path

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def zap_addr(self) -> str:
        return f"127.0.0.1:{self.zap_port}"


@dataclass
class NodeOptions:
    """What differs between starts of a node (faults change these)."""

    extra_args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


class NodeProcess:
    """One ``tasksd serve`` process that can be started many times."""

    def __init__(self, spec: NodeSpec, common_args: list[str], log_path: Path) -> None:
        self.spec = spec
        self.common_args = common_args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        self.options = NodeOptions()
        self.starts = 0
        #: Set while the harness itself stops the process, so that the exit is
        #: not mistaken for a crash (kill/terminate run on worker threads).
        self.stopping = False
        #: Exits the harness did not cause: ``{"code", "start", "log"}``.
        self.crashes: list[dict[str, Any]] = []

    @property
    def node_id(self) -> str:
        return self.spec.node_id

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def command(self, options: NodeOptions) -> list[str]:
        s = self.spec
        return [
            sys.executable, "-m", "hanzo_tasks.cluster.cli", "serve",
            "--node-id", s.node_id,
            "--data-dir", str(s.data_dir),
            "--http", f"127.0.0.1:{s.http_port}",
            "--zap", f"127.0.0.1:{s.zap_port}",
            "--peer", f"127.0.0.1:{s.peer_port}",
            "--advertise-peer", f"127.0.0.1:{s.proxy_port}",
            *self.common_args,
            *options.extra_args,
        ]

    def start(self, options: NodeOptions | None = None) -> None:
        """Spawn the process (does not wait for readiness)."""
        if self.running:
            raise RuntimeError(f"{self.node_id} is already running")
        self.options = options or NodeOptions()
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
        env.update(self.options.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.spec.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"\n==== chaos: start #{self.starts + 1} {self.options} ====\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                self.command(self.options),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=str(Path(__file__).resolve().parent.parent),
                start_new_session=True,
            )
        procs.register(self.proc.pid)
        self.starts += 1
        self.paused = False

    def reap(self) -> bool:
        """Notice an exit the harness did not cause; True when one is found (it is recorded)."""
        proc = self.proc
        if proc is None or self.stopping or proc.poll() is None:
            return False
        self.crashes.append({"code": proc.returncode, "start": self.starts, "log": self.log_tail(1500),
                             "mono": time.monotonic()})
        procs.forget(proc.pid)
        self.proc = None
        self.paused = False
        return True

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the node's process group (ignored when not running)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self, timeout: float = 15.0) -> None:
        """SIGKILL (a crash) and reap."""
        if self.proc is None:
            return
        self.stopping = True
        try:
            self.signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
            if self.proc.poll() is not None:
                procs.forget(self.proc.pid)
            self.proc = None
            self.paused = False
        finally:
            self.stopping = False

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the clean stop: hand-over, drain, flush); SIGKILL after ``timeout``."""
        if self.proc is None:
            return None
        self.stopping = True
        try:
            if self.paused:
                self.resume()
            self.signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                rc = None
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(10)
            if self.proc.poll() is not None:
                procs.forget(self.proc.pid)
            self.proc = None
            return rc
        finally:
            self.stopping = False

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        self.signal(signal.SIGCONT)
        self.paused = False

    def log_tail(self, n: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except OSError:
            return ""
        return data[-n:].decode(errors="replace")


def write_secret(path: Path) -> None:
    """A fresh cluster secret (64 hex characters), readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secrets.token_hex(32) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def build_nodes(
    root: Path,
    ports: list[int],
    n: int,
    *,
    partitions: int,
    raft_args: list[str] | None = None,
    replication_factor: int = 3,
) -> list[NodeProcess]:
    """``n`` node processes (not started) using ``4 * n`` ports from ``ports``.

    Every node gets ``--replication-factor replication_factor`` (the server
    default is 3): below ``n``, each partition is replicated by that many nodes.
    """
    if len(ports) < 4 * n:
        raise ValueError("need four ports per node")
    secret = root / "cluster.secret"
    if not secret.exists():
        write_secret(secret)
    specs = []
    for i in range(n):
        h, z, p, x = ports[4 * i : 4 * i + 4]
        specs.append(NodeSpec(f"n{i + 1}", h, z, p, x, root / f"n{i + 1}"))
    peers = ",".join(f"{s.node_id}=127.0.0.1:{s.proxy_port}" for s in specs)
    common = [
        "--replicator", "raft",
        "--peers", peers,
        "--cluster-secret-file", str(secret),
        "--partitions", str(partitions),
        "--replication-factor", str(replication_factor),
        "--storage-reserve-disk", "0",
        *(raft_args or []),
    ]
    return [NodeProcess(s, common, root / f"{s.node_id}.log") for s in specs]


def kill_all(nodes: list[NodeProcess]) -> None:
    """The ``finally`` path: SIGCONT then SIGKILL every node group, never raising."""
    for node in nodes:
        with contextlib.suppress(Exception):
            node.resume()
            node.kill(timeout=10)


def wait_exit(nodes: list[NodeProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for node in nodes:
        while node.running and time.monotonic() < deadline:
            time.sleep(0.05)
