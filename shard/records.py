"""Nexus endpoint and deployment records of a namespace (SPEC §4.7, §5.12).

Placeholder: the commands are declared (``shard.commands.OPS``) and refused
until their handlers land.
"""

from __future__ import annotations

from shard.ctx import Ctx, Reject, Result


def _later(ctx: Ctx) -> Result:
    raise Reject("not_implemented", f"{ctx.cmd['op']} is not implemented yet")


HANDLERS = {op: _later for op in (
    "nexus.put", "nexus.delete", "dep.create", "dep.update", "dep.delete", "dep.set_current",
    "dep.version_add", "dep.version_update", "dep.version_delete",
)}
