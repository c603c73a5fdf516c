"""An in-process single node on a background thread (``tasks.embed()``).

The node gets its own event loop thread, so embedding it never touches the
application's loop; ``stop()`` shuts it down cleanly and joins the thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from typing import Any

from hanzo_tasks.cluster.config import config_from_mapping
from hanzo_tasks.cluster.node import Node


class EmbeddedNode:
    """A node running on an event loop of its own thread."""

    def __init__(self, node: Node, loop: asyncio.AbstractEventLoop, thread: threading.Thread) -> None:
        self.node = node
        self.loop = loop
        self.thread = thread
        self.http_url: str = node.http_url or ""
        self.zap_addr: str | None = node.zap_addr
        self._stopped = False

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        fut = asyncio.run_coroutine_threadsafe(self.node.stop(), self.loop)
        try:
            fut.result(30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(30)


def start(
    *,
    data_dir: str,
    http: str = "127.0.0.1:0",
    zap: str | None = "127.0.0.1:0",
    namespace: str = "default",
    config: Mapping[str, Any] | None = None,
) -> EmbeddedNode:
    """Start a node on its own loop thread. ``zap=None`` serves no ZAP (unless ``config`` sets it)."""
    values: dict[str, Any] = dict(config or {})
    values.setdefault("data_dir", data_dir)
    values.setdefault("http", http)
    if zap is not None:
        values.setdefault("zap", zap)
    values.setdefault("default_namespace", namespace)
    values.setdefault("node_id", "embedded")
    cfg = config_from_mapping(values)
    node = Node(cfg)
    node.zap_enabled = zap is not None or "zap" in values
    return run_on_thread(node, "tasks-embedded")


def run_on_thread(node: Node, name: str, timeout: float = 60.0) -> EmbeddedNode:
    """Start ``node`` on an event loop of its own thread; return once it serves.

    A node that fails to start is stopped again on its thread (its listeners and
    stores closed) and the error is raised here, on the caller's thread.
    """
    loop = asyncio.new_event_loop()
    started = threading.Event()
    error: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(node.start())
        except BaseException as e:  # reported on the caller's thread
            error.append(e)
            started.set()
            loop.run_until_complete(node.stop())
            loop.close()
            return
        started.set()
        loop.run_forever()
        loop.close()

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    if not started.wait(timeout):
        raise TimeoutError(f"the node did not start within {timeout} s")
    if error:
        thread.join(30)
        raise error[0]
    return EmbeddedNode(node, loop, thread)
