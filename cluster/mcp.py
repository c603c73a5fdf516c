"""MCP over Streamable HTTP (SPEC §7). Placeholder until the tools land."""

from __future__ import annotations

from typing import Any

from protocol.errors import ApiError


async def h_mcp(s: Any, c: Any) -> Any:
    raise ApiError("not_implemented", "MCP is not served by this build yet")
