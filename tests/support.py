"""Real node processes for tests: start ``tasksd`` on free loopback ports.

The node binds port 0 and logs the address it got, so tests never race for a
port. Every process is killed at teardown, so nothing leaks past a test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from hanzo_tasks.testing import NodeHttp

_SERVING = re.compile(r"serving http=(\S+)")


class NodeProcess(NodeHttp):
    def __init__(self, data_dir: Path, args: list[str] | None = None, env: dict[str, str] | None = None):
        self.data_dir = Path(data_dir)
        self.args = list(args or [])
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 30.0, ready: bool = True) -> NodeProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.pop("TASKSD_CONFIG", None)
        env.update(self.env or {})
        cmd = [
            sys.executable, "-m", "hanzo_tasks.cluster.cli", "serve",
            "--http", "127.0.0.1:0", "--data-dir", str(self.data_dir), "--node-id", "t1",
            *self.args,
        ]
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tasksd exited {self.proc.returncode}: {self.log()[offset:]}")
            m = _SERVING.search(self.log()[offset:])
            if m:
                self.url = "http://" + m.group(1)
                if not ready or self.get("/readyz")[0] == 200:
                    return self
            time.sleep(0.05)
        raise TimeoutError(f"tasksd not ready: {self.log()[offset:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(30)
        self.proc = None

    def stop(self) -> int | None:
        """SIGTERM and wait: the clean shutdown path."""
        if not self.proc:
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait(10)
        self.proc = None
        return rc
