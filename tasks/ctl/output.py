"""How answers look in table mode: scalars, ``key: value`` records, aligned
tables. (``--output json`` prints the body as it is; see Ctx.emit.)"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

# Enum prefixes a table cell leaves out: RUNNING reads better than
# WORKFLOW_EXECUTION_STATUS_RUNNING in a column.
_PREFIXES = (
    "WORKFLOW_EXECUTION_STATUS_",
    "NAMESPACE_STATE_",
    "EVENT_TYPE_",
    "SCHEDULE_OVERLAP_POLICY_",
)


def scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and "\n" not in value else json.dumps(value, ensure_ascii=False)
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def record_lines(obj: Mapping[str, Any], indent: int = 0) -> list[str]:
    """A record as indented ``key: value`` lines (nested maps indent, lists use ``-``)."""
    pad = " " * indent
    lines: list[str] = []
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(record_lines(value, indent + 2))
        elif isinstance(value, list) and value:
            lines.append(f"{pad}{key}:")
            for item in value:
                if isinstance(item, dict) and item:
                    sub = record_lines(item, indent + 4)
                    sub[0] = f"{pad}  - " + sub[0][indent + 4 :]
                    lines.extend(sub)
                else:
                    lines.append(f"{pad}  - {scalar(item)}")
        else:
            lines.append(f"{pad}{key}: {scalar(value)}")
    return lines


def write_table(out: TextIO, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    for row in [list(headers), *cells]:
        out.write("  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() + "\n")


def _cell(value: Any) -> str:
    if value == "":
        return ""
    if isinstance(value, str):
        for prefix in _PREFIXES:
            if value.startswith(prefix):
                return value[len(prefix) :]
    text = scalar(value)
    return text if len(text) <= 80 else text[:77] + "..."


def nested(obj: Any, *path: str) -> Any:
    """``obj[path[0]][path[1]]...``, or None where a step is missing or not a map."""
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def human_bytes(n: Any) -> str:
    if not isinstance(n, int | float):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{n}B"  # pragma: no cover
