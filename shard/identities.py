"""Identities: a caller's role in one namespace (SPEC §4.7, §5.13).

An Identity record ``{email, namespace, role, grantTime}`` gives the caller
whose token carries that ``email`` a role in this namespace that replaces the
org role of the token. Emails are stored lower-cased, so that matching does
not depend on how a provider capitalises them.
"""

from __future__ import annotations

from hanzo_tasks.protocol.names import ROLES
from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard.ctx import Ctx, Handler, Reject, Result, require_namespace


def op_id_put(ctx: Ctx) -> Result:
    """Create or replace; ``grantTime`` is the time of this grant."""
    require_namespace(ctx, for_write=True)
    email, role = ctx.cmd["email"], ctx.cmd["role"]
    if role not in ROLES:
        raise Reject("invalid_argument", f"role must be one of {', '.join(ROLES)}")
    rec = {"email": email, "namespace": ctx.ns, "role": role, "grantTime": ctx.now}
    ctx.put(ctx.k.identity(email), rec)
    ctx.notify("identity.changed", email=email)  # for role caches; not an SSE kind
    return C.ok(identity=rec)


def op_id_delete(ctx: Ctx) -> Result:
    email = ctx.cmd["email"]
    if not ctx.exists(ctx.k.identity(email)):
        raise Reject("not_found", f"identity {email} not found")
    ctx.delete(ctx.k.identity(email))
    ctx.notify("identity.changed", email=email)
    return C.ok()


HANDLERS: dict[str, Handler] = {"id.put": op_id_put, "id.delete": op_id_delete}
