"""A flood from one address cannot flood the log (issue 16: rate-limited logging).

Connections refused because their address is over its per-address cap are the
client's doing: each is counted (``tasks_connection_limits_total``) and logged
through ``client_error``, a handful of INFO lines at most, never a WARNING.
The node-wide cap stays a WARNING (the operator may need to raise it), at most
once a minute.
"""

from __future__ import annotations

import logging
import re
import socket

import pytest
from hanzo_tasks.cluster.api.client_errors import BURST
from hanzo_tasks.testing import TestNode, http_call

FLOOD = 60


def silent(addr: tuple[str, int], source: str) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind((source, 0))
    s.connect(addr)
    return s


def refused_count(node: TestNode, listener: str, reason: str) -> float:
    _, text, _ = http_call(node.url, "GET", "/metrics")
    m = re.search(rf'tasks_connection_limits_total{{listener="{listener}",reason="{reason}"}} (\S+)', text)
    return float(m.group(1)) if m else -1.0


def lines(caplog: pytest.LogCaptureFixture, needle: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if needle in r.getMessage()]


def test_per_address_refusals_are_quiet_client_errors(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hanzo_tasks")
    config = {"listeners": {"zap_max_connections_per_address": 2, "http_max_connections_per_address": 2,
                            "zap_hello_timeout": "30s"}}
    held: list[socket.socket] = []
    try:
        with TestNode(config=config) as node:
            zap = node.zap_address
            assert zap is not None
            host, port = node.url.split("//", 1)[1].rsplit(":", 1)
            for addr in (zap, (host, int(port))):
                for _ in range(FLOOD):
                    held.append(silent(addr, "127.0.0.4"))
            for s in held[2:FLOOD] + held[FLOOD + 2:]:  # refused: closed (ZAP) or answered 503 (HTTP)
                s.settimeout(5.0)
                try:
                    s.recv(4096)
                except (ConnectionResetError, TimeoutError):
                    pass
            assert refused_count(node, "zap", "per_address") == FLOOD - 2
            assert refused_count(node, "http", "per_address") == FLOOD - 2
    finally:
        for s in held:
            s.close()
    for listener in ("zap", "http"):
        said = lines(caplog, f"{listener}: 127.0.0.4 holds")
        loud = [r for r in said if r.levelno >= logging.INFO]
        assert len(said) == FLOOD - 2, listener  # every one is said, at DEBUG past the burst
        assert 1 <= len(loud) <= BURST, (listener, len(loud))
        assert all(r.levelno == logging.INFO for r in loud), listener
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_the_node_wide_cap_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="hanzo_tasks")
    held: list[socket.socket] = []
    try:
        with TestNode(config={"limits": {"max_zap_connections": 3}, "listeners": {"zap_hello_timeout": "30s"}}) as node:
            zap = node.zap_address
            assert zap is not None
            held += [silent(zap, "127.0.0.5") for _ in range(20)]
            for s in held[3:]:
                s.settimeout(5.0)
                try:
                    s.recv(4096)
                except (ConnectionResetError, TimeoutError):
                    pass
            assert refused_count(node, "zap", "max_connections") == 17
    finally:
        for s in held:
            s.close()
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "connection limit" in r.getMessage()]
    assert len(warned) == 1, caplog.text
