"""Commands: the only way shard state changes.

A command is a msgpack map ``{v, op, org, ns, now, rnd, ...}``. The proposer
stamps ``now`` (epoch ms) and ``rnd`` (32 hex chars of fresh randomness) so
that ``apply`` never reads a clock or draws a random number: every replica
derives the same run ids from ``rnd`` and the same times from ``now``.
"""

from __future__ import annotations

from typing import Any

import msgpack

VERSION = 1

#: The fixed set of operations (also the ``op`` label of
#: ``tasks_commands_applied_total``).
OPS = (
    "ns.register",
    "ns.update",
    "ns.delete",
    "wf.start",
    "wf.signal",
    "wf.cancel",
    "wf.terminate",
    "wf.reset",
    "wf.metadata",
    "sched.create",
    "sched.update",
    "sched.delete",
    "sched.pause",
    "sched.fire",
    "sched.trigger",
    "sa.add",
    "sa.remove",
    "batch.start",
    "batch.progress",
    "batch.terminate",
    "id.put",
    "id.delete",
    "nexus.put",
    "nexus.delete",
    "dep.create",
    "dep.update",
    "dep.delete",
    "dep.set_current",
    "dep.version_add",
    "dep.version_update",
    "dep.version_delete",
    "sys.barrier",
    "sys.batch",
    "wt.start",
    "wt.complete",
    "wt.fail",
    "wt.timeout",
    "wf.deadline",
    "act.schedule",
    "act.start",
    "act.lease",
    "act.release",
    "act.complete",
    "act.fail",
    "act.cancel",
    "act.heartbeat",
    "act.timeout",
    "mig.begin",
    "mig.fence",
    "mig.unfence",
    "mig.gc",
    "mig.incoming",
    "mig.chunk",
    "mig.tail",
    "mig.activate",
    "mig.drop",
)


class CommandError(ValueError):
    """The bytes are not a command this version understands."""


def encode(command: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(command, use_bin_type=True)
    return packed


BATCH_OVERHEAD = 64
"""Bytes a ``sys.batch`` envelope adds around its commands (besides 5 a command)."""


def encode_batch(commands: list[bytes]) -> bytes:
    """Several encoded commands as one log entry (``sys.batch``): proposals that
    wait for one group at the same moment share a Raft entry; each is applied
    in order, in its own nested transaction, and answered on its own."""
    return encode({"v": VERSION, "op": "sys.batch", "org": "", "ns": "", "now": 0, "cmds": commands})


def decode(data: bytes) -> dict[str, Any]:
    try:
        cmd = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as e:  # msgpack raises several unrelated types
        raise CommandError(f"undecodable command: {e}") from None
    if not isinstance(cmd, dict):
        raise CommandError("command is not a map")
    if cmd.get("v") != VERSION:
        raise CommandError(f"unsupported command version {cmd.get('v')!r}")
    if cmd.get("op") not in OPS:
        raise CommandError(f"unknown op {cmd.get('op')!r}")
    for field in ("org", "ns"):
        if not isinstance(cmd.get(field), str):
            raise CommandError(f"command without {field}")
    if not isinstance(cmd.get("now"), int):
        raise CommandError("command without now")
    return cmd


def ok(**fields: Any) -> dict[str, Any]:
    fields["ok"] = True
    return fields


def err(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"ok": False, "code": code, "message": message}
    if details:
        out["details"] = details
    return out
