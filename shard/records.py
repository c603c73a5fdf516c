"""Nexus endpoint and deployment records of a namespace (SPEC §4.7, §5.1, §5.12).

Both are plain records that nothing in the engine acts upon (build ids do not
affect routing; nothing invokes a nexus endpoint), so their rules are few and
live entirely here:

- a **NexusEndpoint** ``{name, namespace, description?, target, createTime}``
  is created or replaced by name; a replacement keeps the first
  ``createTime`` (the record has no ``updateTime``);
- a **Deployment** holds its versions inside one record, so that every rule
  that spans versions (one CURRENT version, ``defaultBuildId`` naming it) is
  checked and changed in a single key write. The first version becomes
  CURRENT and the default; later ones are DRAFT; set-current retires the
  previous CURRENT; the CURRENT version cannot be deleted.

Times are the proposer's ``ctx.now`` (epoch ms). Optional string fields are
stored only when non-empty, so "omitted when empty" holds for the stored form
too and an update with ``""`` clears a field.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard.ctx import Ctx, Handler, Reject, Result, require_namespace

Record = dict[str, Any]

DEPLOYMENT_FIELDS = ("description", "ownerEmail", "defaultCompute")
VERSION_FIELDS = ("description", "compute", "image", "env")
CURRENT, DRAFT, RETIRED = "CURRENT", "DRAFT", "RETIRED"


def _id(ctx: Ctx, field: str) -> str:
    """A name from the command; the service validated it, this keeps apply total."""
    v = ctx.cmd.get(field)
    if not isinstance(v, str) or not v:
        raise Reject("invalid_argument", f"{field} is required")
    return v


def _set_fields(rec: Record, fields: Any, allowed: tuple[str, ...]) -> None:
    """Apply the given optional fields: a value sets, an empty value clears."""
    if not isinstance(fields, dict):
        return
    for f in allowed:
        if f not in fields:
            continue
        v = fields[f]
        if v in (None, "", {}):
            rec.pop(f, None)
        else:
            rec[f] = v


# ---- nexus endpoints -----------------------------------------------------------------


def op_nexus_put(ctx: Ctx) -> Result:
    """Create or replace; ``createTime`` is that of the first creation."""
    require_namespace(ctx, for_write=True)
    name, target = _id(ctx, "name"), _id(ctx, "target")
    old = ctx.get(ctx.k.nexus(name))
    rec: Record = {"name": name, "namespace": ctx.ns, "target": target,
                   "createTime": old["createTime"] if old else ctx.now}
    _set_fields(rec, {"description": ctx.cmd.get("description")}, ("description",))
    ctx.put(ctx.k.nexus(name), rec)
    return C.ok(endpoint=rec, created=old is None)


def op_nexus_delete(ctx: Ctx) -> Result:
    require_namespace(ctx, for_write=True)
    name = _id(ctx, "name")
    if not ctx.exists(ctx.k.nexus(name)):
        raise Reject("not_found", f"nexus endpoint {name} not found")
    ctx.delete(ctx.k.nexus(name))
    return C.ok()


# ---- deployments -------------------------------------------------------------------------


def _deployment(ctx: Ctx) -> tuple[str, Record]:
    require_namespace(ctx, for_write=True)
    name = _id(ctx, "name")
    rec = ctx.get(ctx.k.deployment(name))
    if rec is None:
        raise Reject("not_found", f"deployment {name} not found")
    return name, rec


def _version(rec: Record, build_id: str) -> Record:
    versions: list[Record] = rec["versions"]
    for v in versions:
        if v["buildId"] == build_id:
            return v
    raise Reject("not_found", f"build {build_id} not found in deployment {rec['name']}")


def op_dep_create(ctx: Ctx) -> Result:
    require_namespace(ctx, for_write=True)
    name = _id(ctx, "name")
    if ctx.exists(ctx.k.deployment(name)):
        raise Reject("already_exists", f"deployment {name} already exists")
    rec: Record = {"name": name, "namespace": ctx.ns, "versions": [], "defaultBuildId": "",
                   "createTime": ctx.now}
    _set_fields(rec, ctx.cmd.get("fields"), DEPLOYMENT_FIELDS)
    ctx.put(ctx.k.deployment(name), rec)
    return C.ok(deployment=rec)


def op_dep_update(ctx: Ctx) -> Result:
    name, rec = _deployment(ctx)
    _set_fields(rec, ctx.cmd.get("fields"), DEPLOYMENT_FIELDS)
    rec["updateTime"] = ctx.now
    ctx.put(ctx.k.deployment(name), rec)
    return C.ok(deployment=rec)


def op_dep_delete(ctx: Ctx) -> Result:
    """Refused while versions exist, unless ``force``."""
    name, rec = _deployment(ctx)
    if rec["versions"] and not ctx.cmd.get("force"):
        n = len(rec["versions"])
        raise Reject("failed_precondition",
                     f"deployment {name} has {n} version{'s' if n != 1 else ''}; delete with force=true")
    ctx.delete(ctx.k.deployment(name))
    return C.ok()


def op_dep_set_current(ctx: Ctx) -> Result:
    """The target becomes CURRENT and the default, the previous CURRENT RETIRED; idempotent."""
    name, rec = _deployment(ctx)
    build_id = _id(ctx, "buildId")
    target = _version(rec, build_id)
    if target["state"] == CURRENT and rec["defaultBuildId"] == build_id:
        return C.ok(deployment=rec, changed=False)
    for v in rec["versions"]:
        if v is not target and v["state"] == CURRENT:
            v["state"] = RETIRED
            v["updateTime"] = ctx.now
    target["state"] = CURRENT
    target["updateTime"] = ctx.now
    rec["defaultBuildId"] = build_id
    rec["updateTime"] = ctx.now
    ctx.put(ctx.k.deployment(name), rec)
    return C.ok(deployment=rec, changed=True)


def op_dep_version_add(ctx: Ctx) -> Result:
    """The first version is CURRENT and the default; later ones are DRAFT."""
    name, rec = _deployment(ctx)
    build_id = _id(ctx, "buildId")
    if any(v["buildId"] == build_id for v in rec["versions"]):
        raise Reject("already_exists", f"build {build_id} already exists in deployment {name}")
    first = not rec["defaultBuildId"]
    ver: Record = {"buildId": build_id, "state": CURRENT if first else DRAFT, "createTime": ctx.now}
    _set_fields(ver, ctx.cmd.get("fields"), VERSION_FIELDS)
    rec["versions"].append(ver)
    if first:
        rec["defaultBuildId"] = build_id
    rec["updateTime"] = ctx.now
    ctx.put(ctx.k.deployment(name), rec)
    return C.ok(version=ver, deployment=rec)


def op_dep_version_update(ctx: Ctx) -> Result:
    name, rec = _deployment(ctx)
    ver = _version(rec, _id(ctx, "buildId"))
    _set_fields(ver, ctx.cmd.get("fields"), VERSION_FIELDS)
    ver["updateTime"] = ctx.now
    rec["updateTime"] = ctx.now
    ctx.put(ctx.k.deployment(name), rec)
    return C.ok(version=ver, deployment=rec)


def op_dep_version_delete(ctx: Ctx) -> Result:
    """The CURRENT version cannot be deleted: set another current first."""
    name, rec = _deployment(ctx)
    build_id = _id(ctx, "buildId")
    ver = _version(rec, build_id)
    if ver["state"] == CURRENT or rec["defaultBuildId"] == build_id:
        raise Reject("failed_precondition",
                     f"build {build_id} is the current version of deployment {name}; set another current first")
    rec["versions"] = [v for v in rec["versions"] if v is not ver]
    rec["updateTime"] = ctx.now
    ctx.put(ctx.k.deployment(name), rec)
    return C.ok(deployment=rec)


HANDLERS: dict[str, Handler] = {
    "nexus.put": op_nexus_put,
    "nexus.delete": op_nexus_delete,
    "dep.create": op_dep_create,
    "dep.update": op_dep_update,
    "dep.delete": op_dep_delete,
    "dep.set_current": op_dep_set_current,
    "dep.version_add": op_dep_version_add,
    "dep.version_update": op_dep_version_update,
    "dep.version_delete": op_dep_version_delete,
}
