"""In-process nodes for the rule-level suites (``hanzo_tasks.testing``), shaped like ``NodeProcess``."""

from __future__ import annotations

from pathlib import Path

from hanzo_tasks.testing import FakeClock, TestNode


def start_test_node(data_dir: Path, args: list[str] | None = None) -> TestNode:
    """An in-process node shaped like ``NodeProcess``: node id ``t1``, ZAP on a free port.

    Its clock ticks with real time (the suites were written against a real
    clock: back-offs, throttles, "now" in timestamps) and jumps when a test
    advances it, instead of sleeping until a timer is due.
    """
    return TestNode(data_dir, clock=FakeClock(ticking=True), node_id="t1", args=args or []).start()
