"""The worker process of a chaos run: real ``tasks.Worker`` handlers over ZAP.

One process serves the whole run, with one ZAP client per node (so there is
a worker on every node, as a real deployment would have) and one
``tasks.Worker`` per (node, namespace). It runs in its own process so that a
stuck worker cannot stall the harness, and so that faults never touch it: it
is the nodes that fail, and the workers must ride through (reconnect,
resubscribe, have tasks redelivered).

Every handler call is logged as a JSON line (``workflowId``, runId, attempts,
node), so the report can say how often handlers ran more than once (allowed:
at least once) while the checker verifies that completions were applied at
most once (not allowed to repeat).

    python -m chaos.workerproc --zap n1=127.0.0.1:PORT ... --namespace NS ... \
        --queue chaos --log workers.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

JOB_TYPE = "chaos.job"
TICK_TYPE = "chaos.tick"


class CallLog:
    """Append-only JSONL of handler calls, shared by the worker threads."""

    def __init__(self, path: Path) -> None:
        self._lock = threading.Lock()
        self._f = open(path, "a", encoding="utf-8")

    def write(self, rec: dict[str, Any]) -> None:
        line = json.dumps(rec, separators=(",", ":"), default=str) + "\n"
        with self._lock:
            self._f.write(line)
            self._f.flush()

    def close(self) -> None:
        with self._lock:
            self._f.close()


def make_handler(node: str, kind: str, calls: CallLog, max_sleep: float):
    """A task-style handler: note the call, maybe linger, return the workflow id.

    The result names the workflow, so the checker can tell that the completion
    recorded for a run is the one computed for that run.
    """
    import hanzo_tasks as tasks

    rnd = random.Random()

    def handler(payload: Any) -> dict[str, Any]:
        ctx = tasks.context()
        calls.write({
            "t": time.time(), "node": node, "type": kind, "ns": ctx.namespace,
            "wid": ctx.workflow_id, "runId": ctx.run_id, "attempt": ctx.attempt,
            "taskAttempt": getattr(ctx, "task_attempt", None),
        })
        if max_sleep > 0:
            time.sleep(rnd.uniform(0, max_sleep))
        return {"wid": ctx.workflow_id}

    return handler


def start_worker(node: str, zap: str, ns: str, queue: str, calls: CallLog, max_sleep: float,
                 stop: threading.Event) -> None:
    """Start one worker, retrying until its node answers (it may be down at first)."""
    import hanzo_tasks as tasks

    while not stop.is_set():
        client = tasks.Client(zap_addr=zap, namespace=ns, task_queue=queue)
        worker = tasks.Worker(client, queue, namespace=ns, identity=f"chaos-{node}-{ns}", max_concurrent=8)
        worker.register(JOB_TYPE, make_handler(node, JOB_TYPE, calls, max_sleep))
        worker.register(TICK_TYPE, make_handler(node, TICK_TYPE, calls, 0.0))
        try:
            worker.start()
        except Exception as e:  # node down or not ready yet: try again
            logging.getLogger("chaos.worker").info("worker %s/%s not started: %s", node, ns, e)
            try:
                client.stop(timeout=2)
            except Exception:
                pass
            stop.wait(1.0)
            continue
        calls.write({"t": time.time(), "event": "subscribed", "node": node, "ns": ns})
        stop.wait()
        try:
            worker.stop(timeout=2)
            client.stop(timeout=2)
        except Exception:
            pass
        return


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m chaos.workerproc")
    p.add_argument("--zap", action="append", required=True, help="node=host:port (repeatable)")
    p.add_argument("--namespace", action="append", required=True)
    p.add_argument("--queue", default="chaos")
    p.add_argument("--log", required=True)
    p.add_argument("--max-sleep", type=float, default=0.2, help="longest handler linger (s)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    calls = CallLog(Path(args.log))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    threads = []
    for spec in args.zap:
        node, _, addr = spec.partition("=")
        for ns in args.namespace:
            t = threading.Thread(target=start_worker, name=f"w-{node}-{ns}",
                                 args=(node, addr, ns, args.queue, calls, args.max_sleep, stop), daemon=True)
            t.start()
            threads.append(t)
    stop.wait()
    deadline = time.monotonic() + 10
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    calls.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
