"""Fixtures shared by the cluster tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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
