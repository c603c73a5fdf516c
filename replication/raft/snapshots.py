"""Log compaction and snapshot installs with LMDB images, in place of pysyncobj's Serializer.

pysyncobj compacts a group's log by serializing "the state" to a file, which
it also streams to followers that fell behind the log. Its own ``Serializer``
gets three things wrong for us, so :class:`LmdbSnapshotter` replaces the whole
object (``RaftGroup`` swaps it in; the method names are pysyncobj's):

- **Taking** (``serialize`` / ``checkSerializing``). ``serialize`` runs on the
  Raft thread at applied index i, where the partition's LMDB is exactly at i:
  it pins an LMDB read transaction there (an MVCC snapshot, instant, holding
  the store's guard so no resize or restore remaps the map under it) and a
  worker thread copies it out. ``checkSerializing`` puts the finished image in
  place atomically and only then reports SUCCESS, after which pysyncobj drops
  the log prefix. An image older than one installed from the leader in the
  meantime is discarded, never put back.
- **Streaming** (``getTransmissionData``, leader side). pysyncobj fires 1 MiB
  chunks at a follower and ignores whether the peer port queued them; a chunk
  dropped under back-pressure left a hole nobody noticed. Here every chunk
  carries its offset, the image's size and index and a CRC32 of its bytes; at
  most ``window`` bytes are unacknowledged; the follower acknowledges what it
  holds contiguously (``snapshot_ack``), and the leader resends from there
  after a gap report or ``resend_after`` seconds of silence.
- **Receiving** (``receive``, follower side). A chunk is written only at the
  offset the follower expects and only if its CRC matches; the image becomes
  the snapshot file only when every byte arrived and its header names the
  announced index. Anything else is refused, and acknowledged as such.

Loading an image (restart or install) is ``load``; how the log is kept around
it is the group's business (``RaftGroup._SyncObj__loadDumpFile``).

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
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import lmdb
import msgpack
from hanzo_tasks.replication.raft import faults
from hanzo_tasks.shard import keys
from hanzo_tasks.shard.store import PartitionStore, fsync_dir
from pysyncobj.config import SERIALIZER_STATE
from pysyncobj.node import Node

log = logging.getLogger("tasks.raft.snapshots")

MAGIC = b"HZTSNAP1"
_LEN = struct.Struct(">I")
CHUNK = 1 << 20
WINDOW = 4 * CHUNK
RESEND_AFTER = 2.0

#: ``RaftGroup`` hands pysyncobj this in place of a chunk once an install is
#: complete and verified, so that pysyncobj loads it and answers success.
INSTALLED = ("installed",)


def read_header(f: BinaryIO) -> dict[str, Any]:
    """The image's msgpack header (ValueError when the file is no image); ``f`` is left at the LMDB data."""
    if f.read(len(MAGIC)) != MAGIC:
        raise ValueError("not a snapshot image")
    raw = f.read(_LEN.size)
    if len(raw) != _LEN.size:
        raise ValueError("truncated snapshot header")
    (n,) = _LEN.unpack(raw)
    body = f.read(n)
    if len(body) != n:
        raise ValueError("truncated snapshot header")
    header = msgpack.unpackb(body, raw=False)
    if not isinstance(header, dict) or not isinstance(header.get("index"), int):
        raise ValueError("malformed snapshot header")
    return header


@dataclass
class _Outgoing:
    """One follower's install in progress, on the leader."""

    file: BinaryIO
    index: int
    size: int
    sent: int = 0
    acked: int = 0
    touched: float = 0.0
    rewound_at: int = -1


@dataclass
class _Incoming:
    """The install this follower is receiving."""

    index: int
    size: int
    path: Path
    file: BinaryIO
    received: int = 0


@dataclass(frozen=True)
class Received:
    """What the follower makes of one chunk: what to acknowledge, and whether the image is complete."""

    index: int
    offset: int
    gap: bool
    complete: bool


class LmdbSnapshotter:
    """pysyncobj's ``Serializer`` interface over one group's partition store."""

    def __init__(self, store: PartitionStore, path: Path, *, chunk: int = CHUNK, window: int = WINDOW,
                 resend_after: float = RESEND_AFTER) -> None:
        self.store = store
        self.path = path
        self._work = path.with_name(path.name + ".work")
        self._recv = path.with_name(path.name + ".recv")
        self.chunk = chunk
        self.window = max(window, chunk)
        self.resend_after = resend_after
        self._thread: threading.Thread | None = None
        self._taking_index = 0
        self._current_id: int | None = None
        self._error: BaseException | None = None
        self._out: dict[str, _Outgoing] = {}
        self._in: _Incoming | None = None
        self.taken = 0
        self.installed = 0
        self.last_index = 0  # the newest image's index (taken or installed)
        self.installed_index = 0  # the newest image installed from a leader
        self.chunks_refused = 0
        self.resends = 0
        # A ".work" or ".recv" left by a crash is half an image: never load it
        # (".tmp" and ".1.tmp" are what pysyncobj's own Serializer left behind).
        for stale in (self._work, self._recv, path.with_name(path.name + ".tmp"),
                      path.with_name(path.name + ".1.tmp")):
            stale.unlink(missing_ok=True)

    # ---- taking ------------------------------------------------------------

    def serialize(self, data: Any, id: int) -> None:  # noqa: A002 - pysyncobj's name
        """Start an image at the applied index (pysyncobj: ``(state, e_last, e_prev, cluster), id``)."""
        if self._thread is not None:
            return
        _, e_last, e_prev, cluster = data
        index = e_last[1]
        header = {
            "index": index,
            "entries": [[bytes(e[0]), e[1], e[2]] for e in (e_last, e_prev)],
            "cluster": sorted(str(n.id) for n in cluster if n is not None),  # a learner has no self node
        }
        if self.store.applied_index() > index:
            # After a restart the store is ahead of the entries pysyncobj is
            # re-applying (they are skipped): an image now would claim less
            # than it holds. pysyncobj asks again at a later tick.
            return
        pin = self.store.pin_read()
        assert pin.txn is not None
        applied = keys.get_applied(pin.txn)
        if applied > index:
            pin.close()
            return
        self._current_id = id
        self._taking_index = index
        self._error = None
        self._thread = threading.Thread(target=self._write, args=(pin, header), name="tasks-snapshot", daemon=True)
        self._thread.start()

    def _write(self, pin: Any, header: dict[str, Any]) -> None:
        try:
            faults.hit("snapshot.write")
            raw = msgpack.packb(header, use_bin_type=True)
            with open(self._work, "wb") as f:
                f.write(MAGIC + _LEN.pack(len(raw)) + raw)
                f.flush()
                self.store.env.copyfd(f.fileno(), compact=True, txn=pin.txn)
                f.flush()
                os.fsync(f.fileno())
        except BaseException as e:  # reported through checkSerializing()
            self._error = e
        finally:
            pin.close()

    def checkSerializing(self) -> tuple[int, int | None]:  # noqa: N802 - pysyncobj's name
        thread = self._thread
        if thread is None:
            return SERIALIZER_STATE.NOT_SERIALIZING, None
        if thread.is_alive():
            return SERIALIZER_STATE.SERIALIZING, self._current_id
        self._thread = None
        if self._error is not None:
            log.error("snapshot of %s failed: %s", self.store.path, self._error)
            self._work.unlink(missing_ok=True)
            return SERIALIZER_STATE.FAILED, self._current_id
        if self.installed_index >= self._taking_index:
            # The leader installed a newer image while this one was written:
            # putting ours back would make the image older than the log.
            log.info("discarded snapshot %d of %s: image %d was installed meanwhile",
                     self._taking_index, self.store.path, self.installed_index)
            self._work.unlink(missing_ok=True)
            return SERIALIZER_STATE.FAILED, self._current_id
        os.replace(self._work, self.path)
        fsync_dir(self.path.parent)
        faults.hit("snapshot.after_replace")
        self.taken += 1
        self.last_index = self._taking_index
        self._cancel_all()  # followers being sent the old image restart with this one
        return SERIALIZER_STATE.SUCCESS, self._current_id

    # ---- loading -----------------------------------------------------------

    def has_image(self) -> bool:
        return self.path.exists() and self.path.stat().st_size > 0

    def deserialize(self) -> tuple[None, Any, Any, set[Node]]:
        """pysyncobj's shape: ``(state, e_last, e_prev, cluster)``; LMDB catches up with the image."""
        with open(self.path, "rb") as f:
            header = read_header(f)
            offset = f.tell()
        index = header["index"]
        if self.store.applied_index() < index:
            self._restore(offset)
        self.last_index = max(self.last_index, index)
        e_last, e_prev = (tuple(e) for e in header["entries"])
        return None, e_last, e_prev, {Node(i) for i in header["cluster"]}

    def rebuild_store(self) -> None:
        """The store cannot be trusted (``PartitionStore.lost_on_reboot``): put
        the image back, or empty it when no image was taken (then the journal
        still holds every entry from the first). Raft replays the rest."""
        if self.has_image():
            with open(self.path, "rb") as f:
                read_header(f)
                offset = f.tell()
            self._restore(offset)
        else:
            self.store.wipe()

    def _restore(self, offset: int) -> None:
        tmp = Path(tempfile.mkdtemp(dir=self.store.path.parent, prefix=".restore-"))
        try:
            with open(self.path, "rb") as src, open(tmp / "data.mdb", "wb") as dst:
                src.seek(offset)
                shutil.copyfileobj(src, dst, 1 << 20)
                dst.flush()
                os.fsync(dst.fileno())
            self.store.restore(tmp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    # ---- streaming to a follower (leader) -----------------------------------

    def getTransmissionData(self, node: Node) -> list[Any] | None:  # noqa: N802 - pysyncobj's name
        """The next chunk for ``node``, or None: nothing may go now (an image is
        being taken, or the window is full). pysyncobj reads item 2 as "last"."""
        if self._thread is not None or not self.has_image():
            return None
        now = time.monotonic()
        out = self._out.get(node.id)
        if out is not None and out.acked >= out.size:
            self._close_out(node.id)  # installed earlier; it fell behind again
            out = None
        if out is None:
            f = open(self.path, "rb")  # noqa: SIM115 - held across calls, closed in _close_out
            try:
                index = read_header(f)["index"]
                size = os.fstat(f.fileno()).st_size
            except Exception:
                f.close()
                raise
            out = self._out[node.id] = _Outgoing(f, index, size, touched=now)
        if out.sent >= out.size or out.sent - out.acked >= self.window:
            if now - out.touched < self.resend_after:
                return None
            out.sent = out.acked  # silence: resend from the last byte the follower holds
            out.touched = now
            self.resends += 1
        out.file.seek(out.sent)
        data = out.file.read(min(self.chunk, out.size - out.sent))
        offset = out.sent
        out.sent += len(data)
        return [data, offset == 0, out.sent >= out.size, offset, out.size, zlib.crc32(data), out.index]

    def on_ack(self, node_id: str, index: int, offset: int, gap: bool) -> None:
        out = self._out.get(node_id)
        if out is None or out.index != index:
            return
        if offset > out.acked:
            out.acked = min(offset, out.size)
            out.touched = time.monotonic()
        if gap and out.rewound_at != offset and offset < out.sent:
            out.sent = max(offset, out.acked)  # a chunk went missing: resend from the hole, once per hole
            out.rewound_at = offset
            self.resends += 1

    def cancelTransmisstion(self, node: Node) -> None:  # noqa: N802 - pysyncobj's (misspelt) name
        self._close_out(node.id)

    def _close_out(self, node_id: str) -> None:
        out = self._out.pop(node_id, None)
        if out is not None:
            out.file.close()

    def _cancel_all(self) -> None:
        for node_id in list(self._out):
            self._close_out(node_id)

    # ---- receiving an image (follower) --------------------------------------

    def receive(self, chunk: list[Any]) -> Received:
        """Take one chunk ``[data, first, last, offset, size, crc, index]``."""
        data, _first, _last, offset, size, crc, index = chunk
        cur = self._in
        if zlib.crc32(data) != crc:
            self.chunks_refused += 1
            return self._ack(index, gap=True)
        if cur is None or cur.index != index or cur.size != size:
            if offset != 0:
                self.chunks_refused += 1
                return Received(index, 0, True, False)
            self._abort_incoming()
            cur = self._in = _Incoming(index, size, self._recv, open(self._recv, "wb"))  # noqa: SIM115
        if offset != cur.received:
            if offset > cur.received:
                self.chunks_refused += 1
            return self._ack(index, gap=offset > cur.received)
        if offset + len(data) > size:
            self.chunks_refused += 1
            self._abort_incoming()
            return Received(index, 0, True, False)
        cur.file.write(data)
        cur.received += len(data)
        if cur.received < size:
            return self._ack(index, gap=False)
        return self._finish(cur)

    def _ack(self, index: int, gap: bool) -> Received:
        cur = self._in
        held = cur.received if cur is not None and cur.index == index else 0
        return Received(index, held, gap, False)

    def _finish(self, cur: _Incoming) -> Received:
        self._in = None
        try:
            cur.file.flush()
            os.fsync(cur.file.fileno())
            cur.file.close()
            with open(cur.path, "rb") as f:
                header_index = read_header(f)["index"]
            if header_index != cur.index:
                raise ValueError(f"image announced as {cur.index} holds {header_index}")
            self._verify_lmdb(cur.path)
        except Exception as e:
            log.error("received snapshot %d for %s is unusable: %s", cur.index, self.store.path, e)
            cur.path.unlink(missing_ok=True)
            self.chunks_refused += 1
            return Received(cur.index, 0, True, False)
        faults.hit("install.before_load")
        os.replace(cur.path, self.path)
        fsync_dir(self.path.parent)
        self.installed_index = max(self.installed_index, cur.index)
        self.installed += 1
        return Received(cur.index, cur.size, False, True)

    def _verify_lmdb(self, image: Path) -> None:
        """Open the image's LMDB read-only before it replaces anything: an image
        that is no database would otherwise become both the snapshot file and
        the store, and the node could neither serve nor restart."""
        tmp = Path(tempfile.mkdtemp(dir=self.store.path.parent, prefix=".verify-"))
        try:
            with open(image, "rb") as src, open(tmp / "data.mdb", "wb") as dst:
                header = read_header(src)
                shutil.copyfileobj(src, dst, 1 << 20)
            env = lmdb.open(str(tmp), readonly=True, lock=False, subdir=True, max_dbs=0)
            try:
                with env.begin() as txn:
                    applied = keys.get_applied(txn)
            finally:
                env.close()
            if applied > header["index"]:
                raise ValueError(f"the image's store applied {applied}, past its index {header['index']}")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _abort_incoming(self) -> None:
        cur, self._in = self._in, None
        if cur is not None:
            cur.file.close()
            cur.path.unlink(missing_ok=True)

    def setTransmissionData(self, data: Any) -> bool:  # noqa: N802 - pysyncobj's name
        """pysyncobj asks whether an install is complete: only ``RaftGroup`` says so, with ``INSTALLED``."""
        return data is INSTALLED

    def close(self) -> None:
        self._cancel_all()
        self._abort_incoming()
