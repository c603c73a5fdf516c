"""Namespace ops: Register, Describe and List."""

from __future__ import annotations

from hanzo_tasks.cluster.api.zap.call import Call
from hanzo_tasks.cluster.api.zap.fields import (
    Json,
    copy_str,
    integer,
    mapping,
    ms_duration,
    page,
    text,
)


async def op_register_namespace(c: Call) -> Json:
    b = c.body
    info: Json = {"name": text(b, "name", required=True)}
    copy_str(b, info, (("description", "description"), ("owner_email", "ownerEmail")))
    config: Json = {}
    retention = ms_duration(b, "retention_ms")
    if retention is not None:
        config["workflowExecutionRetentionTtl"] = retention
    aps = integer(b, "aps_limit")
    if aps is not None:
        config["apsLimit"] = aps
    cd = mapping(b, "custom_data")
    if cd is not None:
        config["customData"] = cd
    return {"namespace": await c.service.namespaces.register_namespace(c.org, {"namespaceInfo": info, "config": config})}


def ns_name(c: Call) -> str:
    """DescribeNamespace's ``name``; absent means the request's namespace."""
    return text(c.body, "name") or c.ns


async def op_describe_namespace(c: Call) -> Json:
    return {"namespace": await c.service.namespaces.get_namespace(c.org, ns_name(c))}


async def op_list_namespaces(c: Call) -> Json:
    size, token = page(c.body)
    res = await c.service.namespaces.list_namespaces(c.org, size, token)
    return {"namespaces": res["namespaces"], "next_page_token": res["nextPageToken"]}
