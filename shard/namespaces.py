"""Namespaces and their search attributes: the ``ns.*`` and ``sa.*`` commands."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard import keys
from hanzo_tasks.shard.ctx import Ctx, Handler, Reject, Result, require_namespace

NS_FIELDS = (
    "description",
    "ownerEmail",
    "retention",
    "apsLimit",
    "historyArchivalState",
    "historyArchivalUri",
    "visibilityArchivalState",
    "visibilityArchivalUri",
    "customData",
)



def op_ns_register(ctx: Ctx) -> Result:
    cmd = ctx.cmd
    existing = ctx.get(ctx.k.namespace())
    if existing is not None:
        if cmd.get("implicit"):
            return C.ok(namespace=existing, created=False)
        raise Reject("already_exists", f"namespace {ctx.ns} already exists")
    rec: dict[str, Any] = {
        "name": ctx.ns,
        "state": "REGISTERED",
        "region": cmd.get("region", ""),
        "createTime": ctx.now,
        "retention": cmd.get("retention") or 720 * 3600 * 1000,
        "apsLimit": cmd.get("apsLimit", 400),
    }
    for f in NS_FIELDS:
        if f in cmd and f not in ("retention", "apsLimit"):
            rec[f] = cmd[f]
    ctx.put(ctx.k.namespace(), rec)
    ctx.put_raw(keys.registry_key(ctx.org, ctx.ns), b"")
    ctx.notify("namespace.registered")
    return C.ok(namespace=rec, created=True)


def op_ns_update(ctx: Ctx) -> Result:
    rec = require_namespace(ctx, for_write=False)
    for f in NS_FIELDS:
        if f in ctx.cmd:
            rec[f] = ctx.cmd[f]
    rec["updateTime"] = ctx.now
    ctx.put(ctx.k.namespace(), rec)
    ctx.notify("namespace.updated")
    return C.ok(namespace=rec)


def op_ns_delete(ctx: Ctx) -> Result:
    rec = require_namespace(ctx, for_write=False)
    if rec["state"] != "DELETED":
        rec["state"] = "DELETED"
        rec["updateTime"] = ctx.now
        rec["deleteTime"] = ctx.now
        ctx.put(ctx.k.namespace(), rec)
        ctx.notify("namespace.deleted")
    return C.ok(namespace=rec)


# ---------------------------------------------------------------------------
# search attributes


def op_sa_add(ctx: Ctx) -> Result:
    require_namespace(ctx, for_write=False)
    name, typ = ctx.cmd["name"], ctx.cmd["type"]
    if ctx.exists(ctx.k.attr(name)):
        raise Reject("already_exists", f"search attribute {name} already exists")
    count = 0
    cur = ctx.txn.cursor()
    prefix = ctx.k.attr_prefix()
    if cur.set_range(prefix):
        for k in cur.iternext(values=False):
            if not k.startswith(prefix):
                break
            count += 1
    if count >= 100:
        raise Reject("invalid_argument", "at most 100 search attributes per namespace")
    ctx.put(ctx.k.attr(name), typ)
    return C.ok(name=name, type=typ)


def op_sa_remove(ctx: Ctx) -> Result:
    name = ctx.cmd["name"]
    if not ctx.exists(ctx.k.attr(name)):
        raise Reject("not_found", f"search attribute {name} not found")
    ctx.delete(ctx.k.attr(name))
    return C.ok()



HANDLERS: dict[str, Handler] = {
    "ns.register": op_ns_register,
    "ns.update": op_ns_update,
    "ns.delete": op_ns_delete,
    "sa.add": op_sa_add,
    "sa.remove": op_sa_remove,
}
