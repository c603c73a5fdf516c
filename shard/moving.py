"""A shard moving between partitions: the state-machine side of a migration.

ARCHITECTURE.md "Migration". Each partition keeps one small *move state* per
shard that is leaving or arriving, outside the shard's key range (so the range
itself copies byte for byte):

- source (``role: src``): from ``mig.begin`` on, every command applied to the
  shard is also appended, with its log index, to a tail kept in this
  partition's state (``\\x01mtail…``). The coordinator copies the range from
  one read transaction (which also tells it how much of the tail that copy
  already contains) and forwards the rest of the tail in order. ``mig.fence``
  stops writes (they are rejected with ``fenced``; the proposer waits and
  retries where the shard's pin points); ``mig.gc`` deletes the range after
  the flip and leaves ``role: moved``; ``mig.unfence`` aborts.
- destination (``role: dst``): ``mig.incoming`` clears any leftover range
  (and, with a higher ``copy`` number, a half-made copy the job gave up),
  ``mig.chunk`` installs checksummed chunks of the copy in order, ``mig.tail``
  re-applies forwarded commands (with their source log index, so ids derived
  from it are identical), ``mig.activate`` opens the shard for writes and
  registers it; ``mig.drop`` aborts. Until activated, writes are rejected.

Every step is idempotent: chunks and tail entries are numbered, and a repeated
or stale step (another job's, or one already applied) changes nothing. Reads
and ``sys.barrier`` are never fenced.

One coordinator drives a job at a time (a fencing token): its steps carry the
job's *claim* number from the meta group (``mig.claim``), and each partition
keeps, per job, the highest claim it has seen and whether the job has *ended*
here (unfenced, dropped, collected or activated). A step with a lower claim
is refused, so a coordinator that was replaced (a deposed meta leader that has
not noticed yet) cannot mix its snapshot into its successor's copy; and once
the job has ended here only its idempotent closing steps are accepted, so a
late ``mig.begin`` or ``mig.incoming`` cannot bring back a move state after the
job was aborted or finished. Steps without a claim (logs written before claims
existed) are not checked against it.
"""

from __future__ import annotations

import zlib
from typing import Any

from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard import keys
from hanzo_tasks.shard.ctx import Ctx, Handler, Reject, Result, pack, unpack
from hanzo_tasks.shard.txn import ReadTxn, Txn

STATE = b"\x01mstate"
TAIL = b"\x01mtail"
GC_BATCH = 20_000
"""Keys deleted per ``mig.gc`` / ``mig.drop`` command (a big range takes several)."""
JOB = b"\x01mjob"
UNFENCED_OPS = frozenset({"sys.barrier"})
CLOSING_OPS = frozenset({"mig.unfence", "mig.gc", "mig.activate", "mig.drop"})
"""Steps that end a job in a partition; they stay accepted after it ended (each is idempotent)."""


def job_key(jid: str) -> bytes:
    return JOB + jid.encode()


def state_key(org: str, ns: str) -> bytes:
    return STATE + org.encode() + b"\x00" + ns.encode()


def tail_prefix(org: str, ns: str) -> bytes:
    return TAIL + org.encode() + b"\x00" + ns.encode() + b"\x00"


def tail_key(org: str, ns: str, seq: int) -> bytes:
    return tail_prefix(org, ns) + seq.to_bytes(8, "big")


def read_state(txn: ReadTxn, org: str, ns: str) -> dict[str, Any] | None:
    raw = txn.get(state_key(org, ns))
    return None if raw is None else unpack(raw)


def _write_state(txn: Txn, org: str, ns: str, st: dict[str, Any] | None) -> None:
    if st is None:
        txn.delete(state_key(org, ns))
    else:
        txn.put(state_key(org, ns), pack(st))


def all_states(txn: ReadTxn) -> list[tuple[str, str, dict[str, Any]]]:
    """Every move state of this partition: (org, ns, state)."""
    out = []
    cur = txn.cursor()
    if cur.set_range(STATE):
        for k, v in cur:
            if not k.startswith(STATE):
                break
            org, _, ns = k[len(STATE):].partition(b"\x00")
            out.append((org.decode(), ns.decode(), unpack(v)))
    return out


def check_writable(txn: ReadTxn, cmd: dict[str, Any]) -> dict[str, Any] | None:
    """The shard's move state when a write must be refused or recorded, else None.

    Raises Reject(``fenced``) for a fenced, moved-away or not-yet-activated
    shard; returns the state of a source still recording its tail.
    """
    if cmd["op"] in UNFENCED_OPS or cmd["op"].startswith("mig."):
        return None
    st = read_state(txn, cmd["org"], cmd["ns"])
    if st is None:
        return None
    if st["role"] == "src" and not st.get("fenced"):
        return st
    where = {"src": "being moved", "dst": "arriving", "moved": "moved"}.get(st["role"], "moving")
    raise Reject("fenced", f"namespace {cmd['ns']} is {where}; retry", {"moveRole": st["role"]})


def record_tail(txn: Txn, cmd: dict[str, Any], index: int, data: bytes) -> None:
    """Append an applied command to the leaving shard's tail (same on every replica)."""
    org, ns = cmd["org"], cmd["ns"]
    st = read_state(txn, org, ns)
    if st is None or st["role"] != "src" or st.get("fenced"):
        return
    st["seq"] += 1
    txn.put(tail_key(org, ns, st["seq"]), pack([index, data]))
    _write_state(txn, org, ns, st)


def read_tail(txn: ReadTxn, org: str, ns: str, after: int, limit: int) -> list[tuple[int, int, bytes]]:
    """Tail entries with seq > ``after``: (seq, source index, command bytes)."""
    out: list[tuple[int, int, bytes]] = []
    cur = txn.cursor()
    prefix = tail_prefix(org, ns)
    if cur.set_range(tail_key(org, ns, after + 1)):
        for k, v in cur:
            if not k.startswith(prefix) or len(out) >= limit:
                break
            index, data = unpack(v)
            out.append((int.from_bytes(k[len(prefix):], "big"), index, data))
    return out


def chunk_crc(pairs: list[list[bytes]]) -> int:
    crc = 0
    for k, v in pairs:
        crc = zlib.crc32(v, zlib.crc32(k, crc))
    return crc


def _delete_prefix(txn: Txn, prefix: bytes, limit: int) -> bool:
    """Delete up to ``limit`` keys under ``prefix``; True when none are left."""
    cur = txn.cursor()
    n = 0
    if not cur.set_range(prefix):
        return True
    while cur.key().startswith(prefix):
        if n >= limit:
            return False
        if not cur.delete():
            return True
        n += 1
        if not cur.key():
            return True
    return True


def _claimed(ctx: Ctx) -> None:
    """Refuse a step of a superseded coordinator, or one that comes after the job ended here;
    record the step's claim (and, for a closing step, that the job ends here)."""
    jid = ctx.cmd.get("job")
    if not isinstance(jid, str):
        return
    op = ctx.cmd["op"]
    raw = ctx.txn.get(job_key(jid))
    rec = unpack(raw) if raw is not None else {"claim": 0, "ended": False}
    claim = ctx.cmd.get("claim")
    if isinstance(claim, int) and claim < rec["claim"]:
        raise Reject("failed_precondition", f"job {jid} is driven by a newer coordinator (claim {rec['claim']})",
                     {"superseded": True})
    if rec["ended"] and op not in CLOSING_OPS:
        raise Reject("failed_precondition", f"job {jid} has ended in this partition", {"superseded": True})
    new = {"claim": max(rec["claim"], claim if isinstance(claim, int) else 0),
           "ended": rec["ended"] or op in CLOSING_OPS}
    if new != rec or raw is None:
        ctx.txn.put(job_key(jid), pack(new))


def _job_state(ctx: Ctx, role: str) -> dict[str, Any]:
    st = read_state(ctx.txn, ctx.org, ctx.ns)
    if st is None or st["role"] != role or st.get("job") != ctx.cmd.get("job"):
        raise Reject("failed_precondition", f"no {role} step of job {ctx.cmd.get('job')} for {ctx.ns} here")
    return st


# ---- source ------------------------------------------------------------------------


def op_begin(ctx: Ctx) -> Result:
    _claimed(ctx)
    st = read_state(ctx.txn, ctx.org, ctx.ns)
    if st is not None and st["role"] == "src" and st.get("job") == ctx.cmd["job"]:
        return C.ok(seq=st["seq"], fenced=bool(st.get("fenced")))
    if st is not None and st["role"] in ("src", "dst"):
        raise Reject("failed_precondition", f"{ctx.ns} is already moving (job {st.get('job')})")
    _delete_prefix(ctx.txn, tail_prefix(ctx.org, ctx.ns), 1 << 62)
    _write_state(ctx.txn, ctx.org, ctx.ns, {"role": "src", "job": ctx.cmd["job"], "seq": 0, "fenced": False})
    return C.ok(seq=0, fenced=False)


def op_fence(ctx: Ctx) -> Result:
    _claimed(ctx)
    st = _job_state(ctx, "src")
    st["fenced"] = True
    _write_state(ctx.txn, ctx.org, ctx.ns, st)
    return C.ok(seq=st["seq"])


def op_unfence(ctx: Ctx) -> Result:
    """Abort at the source: writes go on here, the tail is dropped."""
    _claimed(ctx)
    st = read_state(ctx.txn, ctx.org, ctx.ns)
    if st is None or st["role"] != "src" or st.get("job") != ctx.cmd["job"]:
        return C.ok(changed=False)
    _delete_prefix(ctx.txn, tail_prefix(ctx.org, ctx.ns), 1 << 62)
    _write_state(ctx.txn, ctx.org, ctx.ns, None)
    return C.ok(changed=True)


def op_gc(ctx: Ctx) -> Result:
    """After the flip: delete the range (in batches), then remember where it went."""
    _claimed(ctx)
    st = read_state(ctx.txn, ctx.org, ctx.ns)
    if st is not None and st["role"] == "moved" and st.get("job") == ctx.cmd["job"]:
        return C.ok(done=True)
    st = _job_state(ctx, "src")
    if not st.get("fenced"):
        raise Reject("failed_precondition", "the source is not fenced")
    if not _delete_prefix(ctx.txn, keys.shard_prefix(ctx.org, ctx.ns), GC_BATCH):
        return C.ok(done=False)
    _delete_prefix(ctx.txn, tail_prefix(ctx.org, ctx.ns), 1 << 62)
    ctx.txn.delete(keys.registry_key(ctx.org, ctx.ns))
    _write_state(ctx.txn, ctx.org, ctx.ns, {"role": "moved", "job": ctx.cmd["job"], "to": ctx.cmd.get("to")})
    ctx.notify("shard.moved_out")
    return C.ok(done=True)


# ---- destination ---------------------------------------------------------------------


def op_incoming(ctx: Ctx) -> Result:
    _claimed(ctx)
    st = read_state(ctx.txn, ctx.org, ctx.ns)
    copy = int(ctx.cmd.get("copy") or 1)
    if st is not None and st["role"] == "dst" and st.get("job") == ctx.cmd["job"]:
        if copy <= st.get("copy", 1):
            return C.ok(chunk=st["chunk"], seq=st["seq"], cleared=True)
        # A new copy of the same job (the last one gave way to a map growth):
        # the half-made one goes first, or keys deleted meanwhile would stay.
        if st.get("tail"):
            raise Reject("failed_precondition", f"job {ctx.cmd['job']} is past its copy here")
        if not _delete_prefix(ctx.txn, keys.shard_prefix(ctx.org, ctx.ns), GC_BATCH):
            return C.ok(chunk=0, seq=0, cleared=False)
        _write_state(ctx.txn, ctx.org, ctx.ns, {"role": "dst", "job": ctx.cmd["job"], "chunk": 0, "seq": 0,
                                                "copy": copy})
        return C.ok(chunk=0, seq=0, cleared=True)
    if st is not None and st["role"] == "src":
        raise Reject("failed_precondition", f"{ctx.ns} is leaving this partition (job {st.get('job')})")
    if ctx.txn.get(keys.registry_key(ctx.org, ctx.ns)) is not None:
        raise Reject("failed_precondition", f"{ctx.ns} already lives in this partition")
    if not _delete_prefix(ctx.txn, keys.shard_prefix(ctx.org, ctx.ns), GC_BATCH):
        raise Reject("failed_precondition", "leftover data of an earlier move is still being dropped; retry")
    _write_state(ctx.txn, ctx.org, ctx.ns, {"role": "dst", "job": ctx.cmd["job"], "chunk": 0, "seq": 0,
                                            "copy": copy})
    return C.ok(chunk=0, seq=0, cleared=True)


def op_chunk(ctx: Ctx) -> Result:
    """Install one chunk of the copy. Chunks hold disjoint keys of one snapshot, so
    they may arrive in any order and a repeated one writes the same bytes; once
    the tail has started, a late duplicate (a retried proposal that committed
    after all) is refused so that it cannot overwrite newer values."""
    _claimed(ctx)
    st = _job_state(ctx, "dst")
    n, pairs = ctx.cmd["n"], ctx.cmd["pairs"]
    if st.get("tail") or int(ctx.cmd.get("copy") or 1) != st.get("copy", 1):
        return C.ok(duplicate=True)  # late: the tail started, or the copy was given up
    if chunk_crc(pairs) != ctx.cmd["crc"]:
        raise Reject("invalid_argument", f"chunk {n} failed its checksum")
    prefix = keys.shard_prefix(ctx.org, ctx.ns)
    for k, v in pairs:
        if not k.startswith(prefix):
            raise Reject("invalid_argument", "a chunk key outside the shard's range")
        ctx.txn.put(k, v)
    st["chunk"] = max(st["chunk"], n + 1)
    st["seq"] = int(ctx.cmd.get("base") or 0)  # the copy already contains the source's tail up to here
    _write_state(ctx.txn, ctx.org, ctx.ns, st)
    return C.ok(duplicate=False)


def op_activate(ctx: Ctx) -> Result:
    _claimed(ctx)
    st = read_state(ctx.txn, ctx.org, ctx.ns)
    if st is None and ctx.txn.get(keys.registry_key(ctx.org, ctx.ns)) is not None:
        return C.ok(changed=False)  # already active
    st = _job_state(ctx, "dst")
    _write_state(ctx.txn, ctx.org, ctx.ns, None)
    ctx.txn.put(keys.registry_key(ctx.org, ctx.ns), b"")
    ctx.notify("shard.activated")
    return C.ok(changed=True)


def op_drop(ctx: Ctx) -> Result:
    """Abort at the destination: drop what was copied (in batches)."""
    _claimed(ctx)
    st = read_state(ctx.txn, ctx.org, ctx.ns)
    if st is None or st["role"] != "dst" or st.get("job") != ctx.cmd["job"]:
        return C.ok(done=True)
    if not _delete_prefix(ctx.txn, keys.shard_prefix(ctx.org, ctx.ns), GC_BATCH):
        return C.ok(done=False)
    _write_state(ctx.txn, ctx.org, ctx.ns, None)
    return C.ok(done=True)


def tail_state(ctx: Ctx) -> dict[str, Any]:
    """``mig.tail`` precondition (the machine applies the entries themselves)."""
    _claimed(ctx)
    st = _job_state(ctx, "dst")
    st["tail"] = True  # no chunk may land after this
    return st


def save_tail_seq(txn: Txn, org: str, ns: str, st: dict[str, Any]) -> None:
    _write_state(txn, org, ns, st)


HANDLERS: dict[str, Handler] = {
    "mig.begin": op_begin,
    "mig.fence": op_fence,
    "mig.unfence": op_unfence,
    "mig.gc": op_gc,
    "mig.incoming": op_incoming,
    "mig.chunk": op_chunk,
    "mig.activate": op_activate,
    "mig.drop": op_drop,
}
