"""Content hashes of every replica's partitions, read after the nodes stopped.

The same digest the cluster tests compare (``tests/cluster/raft_support.py``):
sha256 over every (key, value), length-prefixed, under the shard prefix
``s`` and then under the namespace registry ``\\x01reg``. The partition's own
bookkeeping (``\\x01applied``) is left out of the digest, because replicas may
stop at different log indexes when the last entries are no-ops (a leadership
hand-over at shutdown), but it is reported next to the digest: two replicas at
the same applied index must be byte-identical.

The environments are opened read-only and without LMDB's lock file, which is
safe only because their nodes are stopped; it never changes the files. A
``data.mdb`` shorter than its own meta page says (a truncated snapshot image
that became the store) is reported as an error without being read: LMDB maps
the file, and touching a page past its end kills the reader with SIGBUS.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import lmdb

_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
APPLIED = b"\x01applied"
PREFIXES = (b"s", b"\x01reg")
#: The meta group (cluster directory) keeps its records under ``m/``.
META_PREFIXES = (b"m/",)


def _digest(txn: lmdb.Transaction, prefix: bytes) -> str:
    h = hashlib.sha256()
    cur = txn.cursor()
    if cur.set_range(prefix):
        for k, v in cur:
            if not k.startswith(prefix):
                break
            h.update(_U32.pack(len(k)))
            h.update(k)
            h.update(_U32.pack(len(v)))
            h.update(v)
    return h.hexdigest()


def truncated(size: int, last_pgno: int, psize: int) -> str | None:
    """Why a ``data.mdb`` of ``size`` bytes cannot hold its pages up to ``last_pgno`` (None: it can)."""
    need = (last_pgno + 1) * psize
    if size < need:
        return f"data.mdb truncated: {size} bytes, but its meta page says {last_pgno + 1} pages of {psize} ({need} bytes)"
    return None


def partition_digest(path: Path, prefixes: tuple[bytes, ...] = PREFIXES) -> dict[str, Any]:
    """``{"hash", "applied", "keys"}`` of one partition environment (or an ``error``)."""
    if not (path / "data.mdb").exists():
        return {"error": "missing"}
    try:
        env = lmdb.open(str(path), readonly=True, lock=False, subdir=True, max_dbs=0)
    except lmdb.Error as e:
        return {"error": f"{type(e).__name__}: {e}"}
    try:
        size = (path / "data.mdb").stat().st_size
        short = truncated(size, env.info()["last_pgno"], env.stat()["psize"])
        if short:
            return {"error": short}
        with env.begin(buffers=False) as txn:
            raw = txn.get(APPLIED)
            applied = _U64.unpack(raw)[0] if raw else 0
            digest = "".join(_digest(txn, p) for p in prefixes)
            keys = env.stat()["entries"]
        return {"hash": digest, "applied": applied, "keys": keys}
    finally:
        env.close()


def replica_digests(root: Path, node_ids: list[str], partitions: int,
                    replicas: dict[int, list[str]] | dict[int, tuple[str, ...]] | None = None,
                    ) -> dict[str, dict[str, dict[str, Any]]]:
    """partition (``"0"``…, and ``"meta"``) -> node -> digest, for ``<root>/<node>/partitions/<p>``.

    ``replicas`` (partition -> node ids, from the cluster's layout): a replica
    without the partition's ``data.mdb`` is reported ``{"error": "missing"}``.
    Nodes outside it, or every node when it is not known, are read only when
    they have the file (a node holds no replica of a partition when the
    replication factor is below the node count).
    """
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for p in [*(str(i) for i in range(partitions)), "meta"]:
        prefixes = META_PREFIXES if p == "meta" else PREFIXES
        expected = set(replicas.get(int(p), ())) if replicas is not None and p != "meta" else set()
        for nid in node_ids:
            if not (root / nid / "partitions" / p / "data.mdb").exists():
                if nid in expected:
                    out.setdefault(p, {})[nid] = {"error": "missing"}
                continue  # not a replica of this partition (replication_factor below the node count)
            out.setdefault(p, {})[nid] = partition_digest(root / nid / "partitions" / p, prefixes)
    return out
