"""protocol.hostport: the one host:port grammar of client and server."""

from __future__ import annotations

import pytest
from hanzo_tasks.protocol.hostport import join_host_port, split_host_port


@pytest.mark.parametrize(
    ("addr", "want"),
    [
        ("localhost:9999", ("localhost", 9999)),
        ("10.1.2.3:1", ("10.1.2.3", 1)),
        ("[::1]:7243", ("::1", 7243)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("*:80", ("*", 80)),
    ],
)
def test_split_accepts_host_port(addr: str, want: tuple[str, int]) -> None:
    assert split_host_port(addr) == want
    assert split_host_port(join_host_port(*want)) == want


@pytest.mark.parametrize(
    "addr",
    ["host", "host:", ":9999", "host:70000", "zap://host:9999", "::1:80", " host:1", "a/b:1",
     "u@h:1", "[x]:1", "host:1x", "host:१२"],
)
def test_split_refuses_what_is_not_an_address(addr: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(addr)


def test_an_empty_host_only_when_asked_for() -> None:
    assert split_host_port(":9999", empty_host=True) == ("", 9999)
    assert split_host_port("[::]:1", empty_host=True) == ("::", 1)


def test_join_brackets_ipv6_only() -> None:
    assert join_host_port("::1", 80) == "[::1]:80"
    assert join_host_port("example.com", 80) == "example.com:80"
