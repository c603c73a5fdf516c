"""The meta group's state machine: the cluster directory.

Small and rarely written: the partition count fixed at bootstrap and the
members with their addresses. Same rules as the shard state machine: applied
in log order inside one LMDB transaction with the applied index, no clock or
randomness inside, results instead of exceptions.
"""

from __future__ import annotations

from typing import Any

import msgpack

from shard import commands as C
from shard import keys
from shard.store import PartitionStore

PARTITIONS = b"m/partitions"
MEMBER = b"m/member/"


def _pack(v: Any) -> bytes:
    return msgpack.packb(v, use_bin_type=True)


def _unpack(b: bytes) -> Any:
    return msgpack.unpackb(b, raw=False)


class MetaMachine:
    def __init__(self, store: PartitionStore) -> None:
        self.store = store

    def apply(self, index: int, data: bytes) -> dict[str, Any] | None:
        return self.apply_batch([(index, data)])[0]

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

    def _apply_one(self, txn: Any, data: bytes) -> dict[str, Any]:
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
            return C.ok(partitions=want, created=True, member=seeded)
        if op == "meta.member":
            mid = cmd.get("id")
            if not isinstance(mid, str) or not mid:
                return C.err("invalid_argument", "member without id")
            rec = {k: cmd.get(k) for k in ("id", "peer", "http", "zap")}
            txn.put(MEMBER + mid.encode(), _pack(rec))
            return C.ok(member=rec)
        if op == "meta.remove":
            mid = cmd.get("id")
            if isinstance(mid, str):
                txn.delete(MEMBER + mid.encode())
            return C.ok(removed=mid)
        if op == "sys.barrier":
            return C.ok()
        return C.err("invalid_argument", f"unknown meta op {op!r}")

    # ---- reads -----------------------------------------------------------------

    def partitions(self) -> int | None:
        with self.store.read() as txn:
            raw = txn.get(PARTITIONS)
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
