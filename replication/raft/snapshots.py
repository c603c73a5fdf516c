"""Log compaction with LMDB images instead of pickled state.

pysyncobj compacts a group's log by serializing "the state" to a file, which
it also streams to followers that fell behind the log (install snapshot). We
plug three callables into its serializer hooks:

- ``serialize(tmp_file, data)`` runs on the Raft thread at applied index i.
  Apply is synchronous on that thread, so the partition's LMDB is exactly at i;
  we open an LMDB read transaction there (an MVCC snapshot, instant) and hand
  it to a worker thread that writes the image. The Raft thread goes on.
- ``check()`` (pysyncobj's serializeChecker, polled on the Raft thread) puts
  the finished image in place atomically and reports SUCCESS; only then does
  pysyncobj drop the log prefix.
- ``deserialize(file)`` runs on restart and on install: when the local LMDB is
  behind the image, the image replaces it.

Snapshot file: ``MAGIC | u32 header length | msgpack header | LMDB data.mdb``.
The header holds the two log entries pysyncobj keeps (as tuples, the way its
journal returns them) and the member ids. Nothing is pickled.
"""

from __future__ import annotations

import logging
import os
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any

import msgpack
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import Node

from shard import keys
from shard.store import PartitionStore

log = logging.getLogger("tasks.raft.snapshots")

MAGIC = b"HZTSNAP1"
_LEN = struct.Struct(">I")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LmdbSnapshotter:
    """pysyncobj serializer hooks for one group's partition store."""

    def __init__(self, store: PartitionStore, path: Path) -> None:
        self.store = store
        self.path = path
        self._work = path.with_name(path.name + ".work")
        self._thread: threading.Thread | None = None
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        self._error: BaseException | None = None
        self.taken = 0
        self.installed = 0
        self.last_index = 0

    # ---- taking ------------------------------------------------------------

    def serialize(self, tmp_file: str, data: Any) -> None:
        e_last, e_prev, cluster = data
        index = e_last[1]
        header = {
            "index": index,
            "entries": [[bytes(e[0]), e[1], e[2]] for e in (e_last, e_prev)],
            "cluster": sorted(str(n.id) for n in cluster if n is not None),  # a learner has no self node
        }
        # pysyncobj renames tmp_file over the snapshot path when we return: make
        # it the current image (a hard link, free) so the old snapshot stays valid
        # until the new one is complete.
        tmp = Path(tmp_file)
        tmp.unlink(missing_ok=True)
        if self.path.exists():
            os.link(self.path, tmp)
        else:
            tmp.write_bytes(b"")
        txn = self.store.env.begin(write=False)
        applied = keys.get_applied(txn)
        if applied > index:
            txn.abort()
            raise RuntimeError(f"store applied {applied} is past the snapshot index {index}")
        self._state = SERIALIZER_STATE.SERIALIZING
        self._error = None
        self._thread = threading.Thread(
            target=self._write, args=(txn, header), name="tasks-snapshot", daemon=True
        )
        self._thread.start()

    def _write(self, txn: Any, header: dict[str, Any]) -> None:
        try:
            raw = msgpack.packb(header, use_bin_type=True)
            with open(self._work, "wb") as f:
                f.write(MAGIC + _LEN.pack(len(raw)) + raw)
                f.flush()
                self.store.env.copyfd(f.fileno(), compact=True, txn=txn)
                f.flush()
                os.fsync(f.fileno())
            self.last_index = header["index"]
        except BaseException as e:  # reported through check()
            self._error = e
        finally:
            txn.abort()

    def check(self) -> int:
        if self._state != SERIALIZER_STATE.SERIALIZING:
            return SERIALIZER_STATE.NOT_SERIALIZING
        if self._thread is not None and self._thread.is_alive():
            return SERIALIZER_STATE.SERIALIZING
        self._state = SERIALIZER_STATE.NOT_SERIALIZING
        if self._error is not None:
            log.error("snapshot of %s failed: %s", self.store.path, self._error)
            return SERIALIZER_STATE.FAILED
        os.replace(self._work, self.path)
        _fsync_dir(self.path.parent)
        self.taken += 1
        return SERIALIZER_STATE.SUCCESS

    # ---- loading -----------------------------------------------------------

    def deserialize(self, file_name: str) -> tuple[Any, Any, set[Node]]:
        if os.path.getsize(file_name) == 0:
            raise ValueError("no snapshot taken yet")
        with open(file_name, "rb") as f:
            magic = f.read(len(MAGIC))
            if magic != MAGIC:
                raise ValueError(f"{file_name} is not a snapshot")
            (n,) = _LEN.unpack(f.read(_LEN.size))
            header = msgpack.unpackb(f.read(n), raw=False)
            offset = f.tell()
        index = header["index"]
        if self.store.applied_index() < index:
            self._restore(file_name, offset)
            self.installed += 1
        e_last, e_prev = (tuple(e) for e in header["entries"])
        return e_last, e_prev, {Node(i) for i in header["cluster"]}

    def _restore(self, file_name: str, offset: int) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.store.path.parent, prefix=".restore-"))
        try:
            with open(file_name, "rb") as src, open(tmp / "data.mdb", "wb") as dst:
                src.seek(offset)
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            self.store.restore(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
