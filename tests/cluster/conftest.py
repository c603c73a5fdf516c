"""Fixtures shared by the cluster tests.

Rule-level suites (one node, the API's rules) run on ``hanzo_tasks.testing``:
the real server in this process, with a fake clock they advance instead of
sleeping. Durability, SIGKILL, Raft, relay and migration tests keep real
``tasksd`` processes (``zap_node``, ``node_factory``, ``raft_support``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hanzo_tasks.testing import TestNode

from tests.cluster.inproc import start_test_node
from tests.support import NodeProcess


@pytest.fixture
def zap_node(tmp_path: Path):
    """A single real ``tasksd`` with a ZAP listener on a free port: (node, (host, port))."""
    node = NodeProcess(tmp_path / "n1", ["--zap", "127.0.0.1:0"]).start()
    m = re.search(r"serving http=\S+ zap=(\S+)", node.log())
    assert m
    host, port = m.group(1).rsplit(":", 1)
    yield node, (host, int(port))
    node.kill()


@pytest.fixture
def inproc_node(tmp_path: Path) -> Iterator[TestNode]:
    """One fresh in-process node (see ``start_test_node``)."""
    node = start_test_node(tmp_path / "n1")
    try:
        yield node
    finally:
        node.stop()


@pytest.fixture
def inproc_zap_node(inproc_node: TestNode) -> tuple[TestNode, tuple[str, int]]:
    """``zap_node``'s shape, in process: (node, (host, port)); the node has ``clock``."""
    assert inproc_node.zap_address is not None
    return inproc_node, inproc_node.zap_address
