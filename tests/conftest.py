"""Shared fixtures: real ``tasksd`` processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import NodeProcess


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:
    """Start nodes with ``node_factory(name, args)``; all are killed at teardown."""
    nodes: list[NodeProcess] = []

    def make(name: str = "n1", args: list[str] | None = None, env: dict[str, str] | None = None) -> NodeProcess:
        n = NodeProcess(tmp_path / name, args, env)
        nodes.append(n)
        return n.start()

    yield make
    for n in nodes:
        n.kill()


@pytest.fixture
def node(node_factory) -> NodeProcess:
    """One fresh single node."""
    return node_factory()
