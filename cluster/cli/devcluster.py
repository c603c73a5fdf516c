"""``tasksd dev-cluster``: N real ``tasksd serve`` processes on loopback.

Writes ``<dir>/cluster.secret`` once, starts ``n1..nN`` with
``replicator: raft``, data in ``<dir>/n<i>``, ports ``base + i - 1``, prints one
line per node, then ``ready`` once ``/readyz`` answers 200 on every node.
Ctrl-C (or SIGTERM) stops all children.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="tasksd dev-cluster",
        description="Run an N-node Raft cluster on this machine for development.",
        epilog="example: tasksd dev-cluster --nodes 3 --dir ./tasks-dev",
    )
    p.add_argument("--nodes", type=int, default=3, help="number of nodes (default 3)")
    p.add_argument("--dir", default="./tasks-dev", help="data and secret directory (default ./tasks-dev)")
    p.add_argument("--http", type=int, default=7243, help="first HTTP port (default 7243)")
    p.add_argument("--zap", type=int, default=9999, help="first ZAP port (default 9999)")
    p.add_argument("--peer", type=int, default=7300, help="first peer port (default 7300)")
    p.add_argument("--partitions", type=int, default=None, help="partitions (default: the server default)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="more `tasksd serve` flags after --")
    return p.parse_args(argv)


def ensure_secret(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(secrets.token_hex(32) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def node_args(args: argparse.Namespace, i: int) -> list[str]:
    base = Path(args.dir)
    peers = ",".join(f"n{k}=127.0.0.1:{args.peer + k - 1}" for k in range(1, args.nodes + 1))
    cmd = [
        "--node-id", f"n{i}",
        "--data-dir", str(base / f"n{i}"),
        "--http", f"127.0.0.1:{args.http + i - 1}",
        "--zap", f"127.0.0.1:{args.zap + i - 1}",
        "--peer", f"127.0.0.1:{args.peer + i - 1}",
        "--replicator", "raft",
        "--peers", peers,
        "--cluster-secret-file", str(base / "cluster.secret"),
    ]
    if args.partitions:
        cmd += ["--partitions", str(args.partitions)]
    extra = [a for a in args.extra if a != "--"]
    return cmd + extra


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
            return r.status == 200
    except Exception:
        return False


def main(argv: list[str]) -> int:
    args = parse(argv)
    if args.nodes < 1:
        print("tasksd dev-cluster: --nodes must be at least 1", file=sys.stderr)
        return 2
    ensure_secret(Path(args.dir) / "cluster.secret")
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        for i in range(1, args.nodes + 1):
            cmd = [sys.executable, "-m", "hanzo_tasks.cluster.cli", "serve", *node_args(args, i)]
            procs.append(subprocess.Popen(cmd))
            print(f"n{i} http=127.0.0.1:{args.http + i - 1} zap=127.0.0.1:{args.zap + i - 1} "
                  f"peer=127.0.0.1:{args.peer + i - 1}", flush=True)
        urls = [f"http://127.0.0.1:{args.http + i}" for i in range(args.nodes)]
        announced = False
        while not stopping:
            if not announced and all(ready(u) for u in urls):
                print("ready", flush=True)
                announced = True
            if any(p.poll() is not None for p in procs):
                print("tasksd dev-cluster: a node exited", file=sys.stderr)
                return 1
            time.sleep(0.2)
        return 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
