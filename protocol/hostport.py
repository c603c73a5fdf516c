"""``host:port`` addresses, parsed one way for the client and the server.

Why a module of its own: the client checks ``zap_addr`` and the address the
server advertises, the server reads its listen addresses, and each had its own
parser with its own idea of what an address is (brackets, empty hosts, port 0).
One grammar here, standard library only, so that ``tasksctl`` and the client may
use it without loading anything else.

The grammar: ``host:port`` or ``[ipv6]:port``; a bare IPv6 address is refused
(``::1:80`` is ambiguous; ``[fe80::1%eth0]:80`` carries a zone), and so is a host holding white space, ``/``, ``@`` or
brackets (a URL given where an address was wanted). The port is 0-65535: the
caller that cannot use 0 (a client must connect somewhere) says so itself.
"""

from __future__ import annotations

import re

__all__ = ["WILDCARD_HOSTS", "join_host_port", "split_host_port"]

_ADDR = re.compile(r"(?:\[([0-9A-Fa-f:.]+(?:%[\w.-]+)?)\]|([^\s:/\[\]@]*)):([0-9]{1,5})")

WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})
"""Hosts that mean "every interface": where a server listens, not how to reach it."""


def split_host_port(addr: str, *, empty_host: bool = False) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` -> (host without brackets, port).

    ``empty_host``: accept ``":port"`` (host ``""``, every interface).
    Raises ValueError for anything else.
    """
    m = _ADDR.fullmatch(addr) if isinstance(addr, str) else None
    if m is None:
        raise ValueError(f"expected host:port or [ipv6]:port, got {addr!r}")
    host = m.group(1) if m.group(1) is not None else m.group(2)
    if not host and not empty_host:
        raise ValueError(f"empty host in {addr!r}")
    port = int(m.group(3))
    if port > 65535:
        raise ValueError(f"port must be 0-65535, got {port}")
    return host, port


def join_host_port(host: str, port: int) -> str:
    """The inverse of :func:`split_host_port` (an IPv6 host gets its brackets)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
