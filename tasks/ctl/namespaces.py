"""``tasksctl ns``: list, create, describe and delete namespaces."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hanzo_tasks.ctl.context import Ctx, call_and_emit, more_hint, paged
from hanzo_tasks.ctl.output import nested
from hanzo_tasks.ctl.transport import ns_path


def _ns_table(ctx: Ctx) -> Callable[[Any], None]:
    def table(body: Any) -> None:
        ctx.table(
            ["NAME", "STATE", "RETENTION", "REGION", "DESCRIPTION"],
            [
                [
                    nested(n, "namespaceInfo", "name"),
                    nested(n, "namespaceInfo", "state"),
                    nested(n, "config", "workflowExecutionRetentionTtl"),
                    nested(n, "namespaceInfo", "region"),
                    nested(n, "namespaceInfo", "description") or "",
                ]
                for n in body.get("namespaces") or []
            ],
        )

    return table


def cmd_ns_list(ctx: Ctx) -> int:
    a = ctx.args
    body = paged(ctx, "/v1/tasks/namespaces", "namespaces", {"pageSize": a.page_size}, a.all)
    ctx.emit(body, _ns_table(ctx))
    more_hint(ctx, body)
    return 0


def cmd_ns_create(ctx: Ctx) -> int:
    a = ctx.args
    info: dict[str, Any] = {"name": a.name}
    if a.description is not None:
        info["description"] = a.description
    payload: dict[str, Any] = {"namespaceInfo": info}
    if a.retention is not None:
        payload["config"] = {"workflowExecutionRetentionTtl": a.retention}
    return call_and_emit(ctx, "POST", "/v1/tasks/namespaces", body=payload)


def cmd_ns_describe(ctx: Ctx) -> int:
    return call_and_emit(ctx, "GET", ns_path(ctx.args.name))


def cmd_ns_delete(ctx: Ctx) -> int:
    return call_and_emit(ctx, "DELETE", ns_path(ctx.args.name))
