"""The meta group's state machine: the cluster directory.

Small and rarely written: the partition count fixed at bootstrap and the
members with their addresses. Same rules as the shard state machine: applied
in log order inside one LMDB transaction with the applied index, no clock or
randomness inside, results instead of exceptions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeGuard

import msgpack
from hanzo_tasks.shard import commands as C
from hanzo_tasks.shard import keys
from hanzo_tasks.shard.store import PartitionStore
from hanzo_tasks.shard.txn import ReadTxn, Txn

PARTITIONS = b"m/partitions"
MEMBER = b"m/member/"
JOB = b"m/job/"
PIN = b"m/pin/"
REPLICAS = b"m/replicas/"
VOTERS = b"m/voters"
# The meta group's voters: at most five (3 survive 1 loss, 5 survive 2); every
# other member follows the group as a learner (it receives every committed
# entry but neither votes nor counts towards a commit).
MAX_META_VOTERS = 5
TERMINAL = ("done", "failed")
JOB_FIELDS = ("id", "org", "namespace", "from", "to", "fromPartition", "toPartition", "placementEpoch", "status",
              "snapshotIndex", "tailEntries", "bytes", "fencedMs", "startedAt", "finishedAt", "error")
PROGRESS_FIELDS = ("status", "snapshotIndex", "tailEntries", "bytes", "fencedMs", "finishedAt", "error", "aborting",
                   "compared")


def initial_meta_voters(ids: Any) -> list[str]:
    """The meta group's voters when a cluster bootstraps from its static peer
    list: the first ``MAX_META_VOTERS`` ids in order, so that every node of
    the same list computes the same set (``meta.init`` records it)."""
    return sorted(set(ids))[:MAX_META_VOTERS]


def _pack(v: Any) -> bytes:
    packed: bytes = msgpack.packb(v, use_bin_type=True)
    return packed


def _unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False)


class MetaMachine:
    def __init__(self, store: PartitionStore) -> None:
        self.store = store

    def apply(self, index: int, data: bytes) -> dict[str, Any] | None:
        return self.apply_batch([(index, data)])[0]

    def apply_membership(self, index: int, op: str, node: str) -> None:
        """A committed membership change of the meta group itself (Raft's own
        entry, not a meta command), applied in log order like any entry: the
        recorded voter set follows the group's configuration, so that a node
        knows at start whether it votes or learns."""
        with self.store.write() as txn:
            if index <= keys.get_applied(txn):
                return
            raw = txn.get(VOTERS)
            if raw is not None:
                voters = set(_unpack(raw))
                if op == "add":
                    voters.add(node)
                elif op == "rem":
                    voters.discard(node)
                txn.put(VOTERS, _pack(sorted(voters)))
            keys.put_applied(txn, index)

    def apply_batch(self, entries: list[tuple[int, bytes]]) -> list[dict[str, Any] | None]:
        out: list[dict[str, Any] | None] = []
        with self.store.write() as txn:
            applied = keys.get_applied(txn)
            for index, data in entries:
                if index <= applied:
                    out.append(None)
                    continue
                out.append(self._apply_one(txn, data))
                applied = index
            keys.put_applied(txn, applied)
        return out

    def _apply_one(self, txn: Txn, data: bytes) -> dict[str, Any]:
        try:
            cmd = msgpack.unpackb(data, raw=False)
        except Exception:
            return C.err("invalid_argument", "undecodable meta command")
        if not isinstance(cmd, dict):
            return C.err("invalid_argument", "meta command is not a map")
        op = cmd.get("op")
        if op == "meta.init":
            want = cmd.get("partitions")
            if not isinstance(want, int) or want < 1:
                return C.err("invalid_argument", "bad partition count")
            raw = txn.get(PARTITIONS)
            if raw is not None:
                have = _unpack(raw)
                if have != want:
                    return C.err("failed_precondition", f"the cluster has {have} partitions", {"partitions": have})
                return C.ok(partitions=have, created=False)
            txn.put(PARTITIONS, _pack(want))
            # Bootstrap: the static peer list of the first node to initialise
            # becomes the member list; later changes are joins and leaves.
            seeded = []
            for m in cmd.get("members") or []:
                if isinstance(m, dict) and isinstance(m.get("id"), str) and m["id"]:
                    rec = {k: m.get(k) for k in ("id", "peer", "http", "zap")}
                    txn.put(MEMBER + m["id"].encode(), _pack(rec))
                    seeded.append(m["id"])
            # Each partition's replica set, computed by the proposer from that
            # same member list (routing.partition_plan). Clusters bootstrapped
            # before replica sets existed have none stored: every member then
            # replicates every partition.
            layout = cmd.get("replicas")
            if isinstance(layout, list) and len(layout) == want:
                for p, nodes in enumerate(layout):
                    if _node_list(nodes):
                        txn.put(REPLICAS + str(p).encode(), _pack(list(nodes)))
            # The meta group's voters at bootstrap; membership entries of the
            # meta group keep it current (apply_membership). Clusters
            # bootstrapped before it was recorded have every member vote.
            voters = cmd.get("voters")
            if _node_list(voters):
                txn.put(VOTERS, _pack(sorted(voters)))
            return C.ok(partitions=want, created=True, member=seeded, layout=True)
        if op == "meta.replicas":
            part, nodes = cmd.get("partition"), cmd.get("replicas")
            have = txn.get(PARTITIONS)
            if have is None or not isinstance(part, int) or not 0 <= part < _unpack(have) or not _node_list(nodes):
                return C.err("invalid_argument", "meta.replicas needs a partition and a non-empty node list")
            # A conditional record (the replica keeper's): applied only over the
            # set it was computed from. No record yet means the set is implied
            # (every member, in clusters bootstrapped before sets were recorded).
            expect = cmd.get("expect")
            raw = txn.get(REPLICAS + str(part).encode())
            if expect is not None and raw is not None and _unpack(raw) != expect:
                return C.err("failed_precondition", f"partition {part}'s replica set changed meanwhile",
                             {"replicas": _unpack(raw)})
            txn.put(REPLICAS + str(part).encode(), _pack(list(nodes)))
            return C.ok(layout=True, partition=part, replicas=list(nodes))
        if op == "meta.member":
            mid = cmd.get("id")
            if not isinstance(mid, str) or not mid:
                return C.err("invalid_argument", "member without id")
            rec = {k: cmd.get(k) for k in ("id", "peer", "http", "zap")}
            # The member's failure domain (node_zone). A command without the
            # field (older nodes, a join through the API) keeps the recorded
            # one; a record without it has no zone.
            zone = cmd["zone"] if "zone" in cmd else _recorded_zone(txn, mid)
            if isinstance(zone, str) and zone:
                rec["zone"] = zone
            txn.put(MEMBER + mid.encode(), _pack(rec))
            return C.ok(member=rec)
        if op == "meta.remove":
            mid = cmd.get("id")
            if isinstance(mid, str):
                txn.delete(MEMBER + mid.encode())
            return C.ok(removed=mid)
        if op == "sys.barrier":
            return C.ok()
        if op in ("mig.job", "mig.update", "mig.pin", "mig.claim"):
            return self._migration(txn, op, cmd)
        return C.err("invalid_argument", f"unknown meta op {op!r}")

    def _migration(self, txn: Txn, op: str, cmd: dict[str, Any]) -> dict[str, Any]:
        """Migration job records, their claims by a coordinator, and shard pins (SPEC §4.10)."""
        if op == "mig.job":
            job = cmd.get("job")
            if not isinstance(job, dict) or not isinstance(job.get("id"), str):
                return C.err("invalid_argument", "bad job")
            existing = txn.get(JOB + job["id"].encode())
            if existing is not None:
                return C.ok(job=_unpack(existing), created=False)
            for other in _scan(txn, JOB):
                if (other["org"], other["namespace"]) == (job["org"], job["namespace"]) and \
                        other["status"] not in TERMINAL:
                    return C.err("already_exists", f"namespace {job['namespace']} already has a running migration",
                                 {"id": other["id"]})
            rec = {f: job.get(f) for f in JOB_FIELDS}
            txn.put(JOB + job["id"].encode(), _pack(rec))
            return C.ok(job=rec, created=True, migration=rec["id"])
        raw = txn.get(JOB + str(cmd.get("id")).encode())
        if raw is None:
            return C.err("not_found", f"migration {cmd.get('id')} not found")
        rec = _unpack(raw)
        if rec["status"] in TERMINAL:
            return C.err("failed_precondition", f"migration {rec['id']} is {rec['status']}")
        if op == "mig.claim":
            # One coordinator drives a job at a time: each claim raises the job's
            # claim number, and steps carrying an older one are refused here and
            # in the partitions (shard.moving). The same request committed twice
            # (a retried proposal) is one claim.
            # A claim made as meta leader carries that leadership's term: one of an
            # older term than the job's latest is a deposed leader's, refused.
            token = cmd.get("token")
            term = cmd.get("term")
            if isinstance(term, int) and term < int(rec.get("claimTerm") or 0):
                return C.err("failed_precondition",
                             f"migration {rec['id']} was claimed by the leader of a later term",
                             {"superseded": True})
            if token is None or token != rec.get("claimToken"):
                rec["claim"] = int(rec.get("claim") or 0) + 1
                rec["owner"], rec["claimToken"] = cmd.get("owner"), token
                if isinstance(term, int):
                    rec["claimTerm"] = term
                txn.put(JOB + rec["id"].encode(), _pack(rec))
            return C.ok(job=rec, migration=rec["id"], claim=rec["claim"])
        if "claim" in cmd and cmd["claim"] != rec.get("claim"):
            return C.err("failed_precondition", f"migration {rec['id']} is driven by another coordinator now",
                         {"superseded": True})
        if cmd.get("aborting") and rec.get("flipped"):
            return C.err("failed_precondition", f"migration {rec['id']} already flipped", {"flipped": True})
        if op == "mig.pin":
            if rec.get("aborting"):
                return C.err("failed_precondition", f"migration {rec['id']} is being aborted")
            pin_key = PIN + rec["org"].encode() + b"\x00" + rec["namespace"].encode()
            old = txn.get(pin_key)
            epoch = (_unpack(old)["epoch"] if old is not None else 0) + 1
            pin = {"partition": rec["toPartition"], "epoch": epoch}
            txn.put(pin_key, _pack(pin))
            rec["placementEpoch"] = epoch
            rec["flipped"] = True
        for f in PROGRESS_FIELDS:
            if f in cmd:
                rec[f] = cmd[f]
        txn.put(JOB + rec["id"].encode(), _pack(rec))
        out = C.ok(job=rec, migration=rec["id"])
        if op == "mig.pin":
            out["pin"] = [rec["org"], rec["namespace"], rec["toPartition"], rec["placementEpoch"]]
        return out

    # ---- reads -----------------------------------------------------------------

    def partitions(self) -> int | None:
        with self.store.read() as txn:
            raw = txn.get(PARTITIONS)
        return None if raw is None else _unpack(raw)

    def jobs(self) -> list[dict[str, Any]]:
        with self.store.read() as txn:
            return list(_scan(txn, JOB))

    def job(self, job_id: str) -> dict[str, Any] | None:
        with self.store.read() as txn:
            raw = txn.get(JOB + job_id.encode())
        return None if raw is None else _unpack(raw)

    def pins(self) -> dict[tuple[str, str], dict[str, Any]]:
        """(org, ns) -> {partition, epoch}: shards moved away from their HRW partition."""
        out = {}
        with self.store.read() as txn:
            cur = txn.cursor()
            if cur.set_range(PIN):
                for k, v in cur:
                    if not k.startswith(PIN):
                        break
                    org, _, ns = k[len(PIN):].partition(b"\x00")
                    out[(org.decode(), ns.decode())] = _unpack(v)
        return out

    def replica_sets(self) -> dict[int, list[str]]:
        """partition -> its replica nodes, as recorded (empty before bootstrap, and
        for clusters bootstrapped before replica sets were recorded)."""
        out: dict[int, list[str]] = {}
        with self.store.read() as txn:
            cur = txn.cursor()
            if cur.set_range(REPLICAS):
                for k, v in cur:
                    if not k.startswith(REPLICAS):
                        break
                    out[int(k[len(REPLICAS):])] = _unpack(v)
        return out

    def voters(self) -> list[str] | None:
        """The meta group's voters as of the applied index (None: not recorded,
        every member votes)."""
        with self.store.read() as txn:
            raw = txn.get(VOTERS)
        return None if raw is None else _unpack(raw)

    def members(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        with self.store.read() as txn:
            cur = txn.cursor()
            if cur.set_range(MEMBER):
                for k, v in cur:
                    if not k.startswith(MEMBER):
                        break
                    out[k[len(MEMBER) :].decode()] = _unpack(v)
        return out


def _recorded_zone(txn: ReadTxn, member: str) -> Any:
    raw = txn.get(MEMBER + member.encode())
    return None if raw is None else _unpack(raw).get("zone")


def _node_list(nodes: Any) -> TypeGuard[list[str]]:
    return (isinstance(nodes, list) and bool(nodes) and len(set(nodes)) == len(nodes)
            and all(isinstance(n, str) and n for n in nodes))


def _scan(txn: ReadTxn, prefix: bytes) -> Iterator[dict[str, Any]]:
    cur = txn.cursor()
    if cur.set_range(prefix):
        for k, v in cur:
            if not k.startswith(prefix):
                break
            yield _unpack(v)
