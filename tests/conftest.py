"""Shared fixtures: real ``tasksd`` processes on loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.support import NodeProcess

# `make test` (and CI) draw the same examples on every run, so a red run
# reproduces bit for bit and a green one cannot turn red by luck; `make fuzz`
# draws new ones each time (HYPOTHESIS_PROFILE=fuzz) to find what those miss.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("fuzz", derandomize=False, print_blob=True, max_examples=500)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
