"""The client's embedded worker: the ``Worker`` that runs ``add``-ed fns (SPEC §2.4).

Why a module of its own: a remote client runs the functions given to ``add``
(and its catch-all ``handler``) on a worker it starts itself, on first need,
and keeps that worker's registry equal to its own. That bookkeeping is neither
the client's calls nor the worker's protocol; here it sits between the two, so
that the client builds on the worker and the worker needs nothing of the client.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from hanzo_tasks.errors import FailedPrecondition, TasksError
from hanzo_tasks.worker import Worker
from hanzo_tasks.worker_transport import WorkerClient

__all__ = ["EMBEDDED_MAX_CONCURRENT", "EmbeddedWorker"]

log = logging.getLogger("tasks")

EMBEDDED_MAX_CONCURRENT = 10  # the embedded worker's slots (SPEC §2.4)


class EmbeddedWorker:
    """One client's worker, started lazily: ``Worker(client, client.task_queue,
    max_concurrent=10)``, subscribed for the client's fns, or as catch-all when
    the client has a handler. It needs a ZAP address; none reachable ->
    ``Unavailable``. A failed start is not remembered: the next call tries again.
    """

    def __init__(self, client: WorkerClient, task_queue: str) -> None:
        self._client = client
        self._task_queue = task_queue
        self._lock = threading.Lock()  # the client takes it before its own lock, never after
        self._worker: Worker | None = None
        self._stopped = False

    @property
    def worker(self) -> Worker | None:
        return self._worker

    def ensure(self, fns: Callable[[], dict[str, Callable[..., Any]]]) -> None:
        """Start the worker (if it is not running) with the registry ``fns()``."""
        with self._lock:
            if self._stopped:
                raise FailedPrecondition("client stopped")
            worker = self._worker
            if worker is None:
                worker = Worker(
                    self._client, self._task_queue, max_concurrent=EMBEDDED_MAX_CONCURRENT
                )
                self._worker = worker
            worker._set_workflows(fns())
            if not worker.running:
                worker.start()

    def sync(self, fns: Callable[[], dict[str, Callable[..., Any]]]) -> None:
        """After a failed ``add``: the running worker forgets the name again."""
        try:
            with self._lock:
                worker = self._worker
                if worker is not None and worker.running:
                    worker._set_workflows(fns())
        except TasksError as e:
            log.debug("embedded worker re-subscribe failed: %s", e)

    def stop(self, timeout: float) -> None:
        """Stop the worker (waiting for a start in progress first); no start after this."""
        with self._lock:
            self._stopped = True
            worker, self._worker = self._worker, None
        if worker is not None:
            try:
                worker.stop(timeout)
            except Exception:  # noqa: BLE001 - the client's stop() must finish whatever happens
                log.exception("stopping the embedded worker failed")
