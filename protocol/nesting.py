"""How deep a decoded JSON-like value nests, judged without recursion.

Why: Python's ``json`` decodes up to about 1,000 levels, but a record holding
a payload nearly that deep then fails to render (RecursionError in
``json.dumps``, or in any recursive check), for as long as it is stored. So
every body is refused on input past ``limits.max_depth``; this walk is how,
for bodies decoded from JSON (ZAP bodies are judged by ``zap.check_body`` in
the same pass that checks their types).
"""

from __future__ import annotations

from typing import Any

__all__ = ["deeper_than", "depth_message"]


def deeper_than(value: Any, limit: int) -> bool:
    """True if ``value`` nests arrays/objects more than ``limit`` levels (``value`` is level 1).

    Only containers are stacked, and the walk stops at the first one past the
    limit, so a hostile body costs no more than a legal one of its size.
    """
    if not isinstance(value, list | dict):
        return False
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if depth > limit:
            return True
        for item in v.values() if isinstance(v, dict) else v:
            if type(item) is list or type(item) is dict:
                stack.append((item, depth + 1))
    return False


def depth_message(limit: int) -> str:
    """The one wording of the refusal, on every transport."""
    return f"the body nests arrays/objects deeper than {limit} levels (limits.max_depth)"
