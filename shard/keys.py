"""Key layout of a partition's LMDB.

Every key of a shard starts with ``shard_prefix(org, ns)``, so a shard is one
contiguous key range: that is what a migration snapshots and what a content
hash covers. Names are validated before they get here and cannot contain NUL,
which makes NUL a safe separator.

    s <org> 0 <ns> 0 n                      namespace record
    s <org> 0 <ns> 0 w <wid> 0 <rid>        run record
    s <org> 0 <ns> 0 l <wid>                latest run id of a workflow id (apply order)
    s <org> 0 <ns> 0 h <rid> <eid:u32>      history event
    s <org> 0 <ns> 0 r <requestId>          start dedup -> (wid, rid)
    s <org> 0 <ns> 0 g <rid> 0 <requestId>  signal dedup
    s <org> 0 <ns> 0 i <~start:u64> <wid> 0 <rid>   list index, newest first
    s <org> 0 <ns> 0 d <~close:u64> <wid> 0 <rid>   dead letters, newest first
    s <org> 0 <ns> 0 c <sid>                schedule record
    s <org> 0 <ns> 0 t <sid> 0 <requestId>  trigger dedup
    s <org> 0 <ns> 0 a <name>               search attribute registration
    s <org> 0 <ns> 0 p <tq> 0 <visible:u64> <wid> 0 <rid>   pending workflow task
    s <org> 0 <ns> 0 x <wid> 0 <rid>        started (leased) workflow task
    s <org> 0 <ns> 0 T <at:u64> <kind> 0 <wid> 0 <rid>   durable run timer (run, execution, cancel)
    s <org> 0 <ns> 0 A <aid> 0 <rid>        standalone activity record
    s <org> 0 <ns> 0 e <rid> <eid:u32>      standalone activity history event
    s <org> 0 <ns> 0 R <requestId>          activity start dedup -> (aid, rid)
    s <org> 0 <ns> 0 q <tq> 0 <visible:u64> <aid> 0 <rid>   pending activity task
    s <org> 0 <ns> 0 U <at:u64> <kind> 0 <aid> 0 <rid>   durable activity timer
    s <org> 0 <ns> 0 o <email>              identity (a caller's role in the namespace)
    s <org> 0 <ns> 0 k <name>               nexus endpoint record
    s <org> 0 <ns> 0 m <name>               deployment record (its versions inside)
    s <org> 0 <ns> 0 b <batchId>            batch operation record
    s <org> 0 <ns> 0 B <batchId> 0 <wid> 0 <rid>   a batch's targets, captured at start
    \x01 applied                            applied index of the partition
    \x01 reg <org> 0 <ns>                   namespace registry of the partition
"""

from __future__ import annotations

import struct

from hanzo_tasks.shard.txn import ReadTxn, Txn

_U64 = struct.Struct(">Q")
_U32 = struct.Struct(">I")
_MAX = (1 << 64) - 1

APPLIED = b"\x01applied"
REGISTRY = b"\x01reg"


def shard_prefix(org: str, ns: str) -> bytes:
    return b"s" + org.encode() + b"\x00" + ns.encode() + b"\x00"


def registry_key(org: str, ns: str) -> bytes:
    return REGISTRY + org.encode() + b"\x00" + ns.encode()


def registry_org_prefix(org: str) -> bytes:
    return REGISTRY + org.encode() + b"\x00"


def inv(ms: int) -> bytes:
    """Big-endian complement: ascending key order = descending time."""
    return _U64.pack(_MAX - max(ms, 0))


def u32(n: int) -> bytes:
    return _U32.pack(n)


def run_suffix(wid: str, rid: str) -> bytes:
    return wid.encode() + b"\x00" + rid.encode()


def split_run_suffix(b: bytes) -> tuple[str, str]:
    wid, _, rid = b.rpartition(b"\x00")
    return wid.decode(), rid.decode()


def get_applied(txn: ReadTxn) -> int:
    raw = txn.get(APPLIED)
    return _U64.unpack(raw)[0] if raw else 0


def put_applied(txn: Txn, index: int) -> None:
    txn.put(APPLIED, _U64.pack(index))


class ShardKeys:
    """Key builders of one shard; cheap to create per command."""

    __slots__ = ("p",)

    def __init__(self, org: str, ns: str) -> None:
        self.p = shard_prefix(org, ns)

    def namespace(self) -> bytes:
        return self.p + b"n"

    def run(self, wid: str, rid: str) -> bytes:
        return self.p + b"w" + run_suffix(wid, rid)

    def runs_prefix(self) -> bytes:
        """Every run record, in (workflowId, runId) order."""
        return self.p + b"w"

    def runs_of(self, wid: str) -> bytes:
        return self.p + b"w" + wid.encode() + b"\x00"

    def latest(self, wid: str) -> bytes:
        return self.p + b"l" + wid.encode()

    def event(self, rid: str, eid: int) -> bytes:
        return self.p + b"h" + rid.encode() + _U32.pack(eid)

    def events_of(self, rid: str) -> bytes:
        return self.p + b"h" + rid.encode()

    def request(self, request_id: str) -> bytes:
        return self.p + b"r" + request_id.encode()

    def signal_request(self, rid: str, request_id: str) -> bytes:
        return self.p + b"g" + rid.encode() + b"\x00" + request_id.encode()

    def list_index(self, start: int, wid: str, rid: str) -> bytes:
        return self.p + b"i" + inv(start) + run_suffix(wid, rid)

    def list_prefix(self) -> bytes:
        return self.p + b"i"

    def dead_index(self, close: int, wid: str, rid: str) -> bytes:
        return self.p + b"d" + inv(close) + run_suffix(wid, rid)

    def dead_prefix(self) -> bytes:
        return self.p + b"d"

    def schedule(self, sid: str) -> bytes:
        return self.p + b"c" + sid.encode()

    def schedule_prefix(self) -> bytes:
        return self.p + b"c"

    def trigger_request(self, sid: str, request_id: str) -> bytes:
        return self.p + b"t" + sid.encode() + b"\x00" + request_id.encode()

    def pending(self, tq: str, visible_at: int, wid: str, rid: str) -> bytes:
        """A workflow task waiting for a worker, by task queue, oldest first."""
        return self.p + b"p" + tq.encode() + b"\x00" + _U64.pack(max(visible_at, 0)) + run_suffix(wid, rid)

    def pending_prefix(self, tq: str | None = None) -> bytes:
        return self.p + b"p" + (tq.encode() + b"\x00" if tq is not None else b"")

    def started(self, wid: str, rid: str) -> bytes:
        """A workflow task leased to a worker (a new leader re-arms its lease timer)."""
        return self.p + b"x" + run_suffix(wid, rid)

    def started_prefix(self) -> bytes:
        return self.p + b"x"

    def deadline(self, at: int, kind: str, wid: str, rid: str) -> bytes:
        """A durable timer of a run (run/execution timeout, cancel sweep), soonest first."""
        return self.p + b"T" + _U64.pack(max(at, 0)) + kind.encode() + b"\x00" + run_suffix(wid, rid)

    def deadline_prefix(self) -> bytes:
        return self.p + b"T"

    def workflow_activity(self, wid: str, rid: str, attempt: int, aid: str) -> bytes:
        """An activity scheduled by a workflow attempt, by its activityId (idempotent 0x006B)."""
        return self.p + b"W" + run_suffix(wid, rid) + b"\x00" + _U32.pack(attempt) + aid.encode()

    def attr(self, name: str) -> bytes:
        return self.p + b"a" + name.encode()

    def attr_prefix(self) -> bytes:
        return self.p + b"a"

    # ---- identities, nexus endpoints, deployments, batches (SPEC §4.7) --------

    def identity(self, email: str) -> bytes:
        return self.p + b"o" + email.encode()

    def identity_prefix(self) -> bytes:
        return self.p + b"o"

    def nexus(self, name: str) -> bytes:
        return self.p + b"k" + name.encode()

    def nexus_prefix(self) -> bytes:
        return self.p + b"k"

    def deployment(self, name: str) -> bytes:
        return self.p + b"m" + name.encode()

    def deployment_prefix(self) -> bytes:
        return self.p + b"m"

    def batch(self, batch_id: str) -> bytes:
        return self.p + b"b" + batch_id.encode()

    def batch_prefix(self) -> bytes:
        return self.p + b"b"

    def batch_target(self, batch_id: str, suffix: bytes) -> bytes:
        """One target of a batch; ``suffix`` is the run's ``<wid> 0 <rid>``."""
        return self.batch_targets(batch_id) + suffix

    def batch_targets(self, batch_id: str) -> bytes:
        return self.p + b"B" + batch_id.encode() + b"\x00"

    # ---- standalone activities (SPEC §4.8, §5.7) ----------------------------

    def activity(self, aid: str, rid: str) -> bytes:
        return self.p + b"A" + run_suffix(aid, rid)

    def activity_prefix(self) -> bytes:
        return self.p + b"A"

    def activity_event(self, rid: str, eid: int) -> bytes:
        """An activity's own history: apart from run histories, so ids never collide."""
        return self.p + b"e" + rid.encode() + _U32.pack(eid)

    def activity_request(self, request_id: str) -> bytes:
        return self.p + b"R" + request_id.encode()

    def activity_pending(self, tq: str, visible_at: int, aid: str, rid: str) -> bytes:
        """An activity attempt waiting for a worker, by task queue, visible-at order."""
        return self.p + b"q" + tq.encode() + b"\x00" + _U64.pack(max(visible_at, 0)) + run_suffix(aid, rid)

    def activity_pending_prefix(self, tq: str | None = None) -> bytes:
        return self.p + b"q" + (tq.encode() + b"\x00" if tq is not None else b"")

    def activity_timer(self, at: int, kind: str, aid: str, rid: str) -> bytes:
        """A durable activity timeout, soonest first (fired by the partition leader)."""
        return self.p + b"U" + _U64.pack(max(at, 0)) + kind.encode() + b"\x00" + run_suffix(aid, rid)

    def activity_timer_prefix(self) -> bytes:
        return self.p + b"U"
