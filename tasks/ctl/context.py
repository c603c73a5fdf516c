"""What every subcommand works with (Ctx) and the few steps most share: call and
print, follow the pages of a list, read a JSON argument."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TextIO

from hanzo_tasks.ctl.errors import UsageError
from hanzo_tasks.ctl.output import record_lines, scalar, write_table
from hanzo_tasks.ctl.transport import Api, ns_path


class Ctx:
    """What a subcommand needs: the API, parsed arguments, output mode and streams."""

    def __init__(self, api: Api, args: argparse.Namespace, out: TextIO, err: TextIO) -> None:
        self.api = api
        self.args = args
        self.out = out
        self.err = err
        self.json = args.output == "json"
        self.namespace: str = args.namespace

    @property
    def ns(self) -> str:
        return ns_path(self.namespace)

    def emit(self, body: Any, table: Callable[[Any], None] | None = None) -> None:
        """Print ``body`` as JSON, or with ``table`` (default: key: value lines)."""
        if self.json:
            self.out.write(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
        elif table is not None:
            table(body)
        else:
            self.record(body)

    def record(self, body: Any) -> None:
        if isinstance(body, dict):
            for line in record_lines(body):
                self.out.write(line + "\n")
        else:
            self.out.write(scalar(body) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        write_table(self.out, headers, rows)


def call_and_emit(ctx: Ctx, method: str, path: str, **kw: Any) -> int:
    """One API call whose answer is printed as it is: most subcommands."""
    _, body = ctx.api.call(method, path, **kw)
    ctx.emit(body)
    return 0


def paged(
    ctx: Ctx, path: str, key: str, query: dict[str, Any], all_pages: bool
) -> dict[str, Any]:
    """GET a list route; with ``all_pages`` follow nextPageToken and merge the pages."""
    _, body = ctx.api.call("GET", path, query=query)
    if not all_pages or not isinstance(body, dict):
        return body
    items = list(body.get(key) or [])
    token = body.get("nextPageToken") or ""
    seen: set[str] = set()
    while token and token not in seen:
        seen.add(token)
        _, page = ctx.api.call("GET", path, query={**query, "nextPageToken": token})
        if not isinstance(page, dict):
            break
        items.extend(page.get(key) or [])
        token = page.get("nextPageToken") or ""
    return {**body, key: items, "nextPageToken": ""}


def more_hint(ctx: Ctx, body: Any) -> None:
    if not ctx.json and isinstance(body, dict) and body.get("nextPageToken"):
        ctx.err.write("(more results: add --all to fetch every page)\n")


def json_arg(text: str | None, flag: str) -> Any:
    """``--input`` value: JSON text, ``@file`` (JSON in a file) or ``@-`` (stdin)."""
    if text is None:
        return None
    source = text
    if text.startswith("@"):
        path = text[1:]
        try:
            if path == "-":
                source = sys.stdin.read()
            else:
                with open(path, encoding="utf-8") as fh:
                    source = fh.read()
        except OSError as exc:
            raise UsageError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None
    try:
        return json.loads(source)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{flag}: not valid JSON ({exc.msg}); quote strings as JSON, e.g. {flag} '\"text\"'"
        ) from None
