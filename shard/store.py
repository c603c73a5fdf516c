"""The LMDB store of one partition.

One LMDB environment per partition replica (``<data_dir>/partitions/<id>/``).
Shard keys are prefixed by ``(org, namespace)`` (see ``shard.keys``); the
partition's own bookkeeping (applied index, namespace registry) lives under a
system prefix that sorts apart from every shard.

Why a guard around transactions: LMDB's map can only be resized while no
transaction of this process is open, and reads run on the event loop thread
while writes run on the replicator's apply thread. ``_Guard`` lets many
readers in at once and lets a resize wait until they have left.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb
from hanzo_tasks.shard import keys
from hanzo_tasks.shard.txn import Txn

MiB = 1 << 20
CLEAN_MARK = "closed-cleanly"
BOOT_ID_FILE = "boot-id"


def _boot_id() -> str | None:
    """This boot's id (Linux); None where the OS does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip() or None
    except OSError:
        return None


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or unlink in ``path`` durable (the entry lives in the directory)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class StorageFull(Exception):
    """The map is at its configured maximum, or the disk is below its reserve."""


class ResizeBusy(Exception):
    """A map resize must wait for a pinned read (a snapshot image being written)."""


class _Guard:
    """Readers share; a resize is exclusive."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class ReadView:
    """A read transaction that cannot outlive its ``with`` block.

    py-lmdb frees a reader slot only when the Transaction object dies, not on
    abort, so a txn left referenced by a coroutine frame across an ``await``
    pins a slot; enough of them exhaust the reader table. Callers get this
    view instead, and the real transaction is dropped when the block ends.
    """

    __slots__ = ("_txn",)

    def __init__(self, txn: Txn) -> None:
        self._txn: Txn | None = txn

    def get(self, key: bytes, default: None = None) -> bytes | None:
        assert self._txn is not None, "read view used after its block"
        return self._txn.get(key, default)

    def cursor(self) -> lmdb.Cursor[bytes]:
        assert self._txn is not None, "read view used after its block"
        return self._txn.cursor()


class PinnedRead:
    """An LMDB read transaction held across threads (see ``PartitionStore.pin_read``)."""

    def __init__(self, store: PartitionStore) -> None:
        self._store = store
        self._cm = store._guard.shared()
        self._cm.__enter__()
        try:
            self.txn: Txn | None = store.env.begin(write=False)
        except BaseException:
            self._cm.__exit__(None, None, None)
            raise
        with store._pin_lock:
            store._pins += 1

    def close(self) -> None:
        txn, self.txn = self.txn, None
        if txn is None:
            return
        try:
            txn.abort()
        finally:
            del txn
            with self._store._pin_lock:
                self._store._pins -= 1
            self._cm.__exit__(None, None, None)


class PartitionStore:
    """An LMDB environment holding the shards of one partition."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        map_size: int = 64 * MiB,
        map_size_max: int = 32 * 1024 * MiB,
        sync: bool = True,
        reserve_disk: int = 0,
    ) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.map_size_max = max(map_size_max, map_size)
        self.reserve_disk = reserve_disk
        self.sync = sync
        self.map_grows = 0
        self._guard = _Guard()
        self._pins = 0  # open PinnedReads (snapshot images being written)
        self._pin_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._disk_checked = 0.0
        self._disk_ok = True
        self.env = self._open_env(map_size)
        # A map bigger than configured may have been grown by an earlier run.
        self.map_size = self.env.info()["map_size"]
        self.lost_on_reboot = self._note_boot()

    # ---- crashes -------------------------------------------------------

    def _note_boot(self) -> bool:
        """Whether the machine rebooted since this store was last open and it
        was not closed cleanly (an OS crash or a power cut).

        Without ``sync``, LMDB's commits reach the disk when the kernel
        writes them back: a process crash loses nothing, but an OS crash may
        leave the applied index ahead of the data it describes, or a torn
        file. Such a store cannot be trusted; the replicator rebuilds it from
        the snapshot image and the (fsynced) Raft journal. A process crash on
        a running machine needs nothing: the page cache survived.
        """
        clean = self.path / CLEAN_MARK
        boot_file = self.path / BOOT_ID_FILE
        was_clean = clean.exists()
        before = boot_file.read_text().strip() if boot_file.exists() else None
        now = _boot_id()
        clean.unlink(missing_ok=True)
        if now is not None and before != now:
            tmp = boot_file.with_name(BOOT_ID_FILE + ".tmp")
            tmp.write_text(now)
            os.replace(tmp, boot_file)
            fsync_dir(self.path)
        return not self.sync and not was_clean and before is not None and now is not None and before != now

    def wipe(self) -> None:
        """Drop everything (the journal will replay it all from index 1)."""
        with self._write_lock, self._guard.exclusive():
            self.env.close()
            for name in ("data.mdb", "lock.mdb"):
                (self.path / name).unlink(missing_ok=True)
            self.env = self._open_env(self.map_size)

    def _open_env(self, map_size: int) -> lmdb.Environment:
        return lmdb.open(
            str(self.path),
            map_size=map_size,
            subdir=True,
            sync=self.sync,
            metasync=self.sync,
            max_dbs=0,
            max_readers=4096,
            lock=True,
        )

    # ---- reads ---------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[ReadView]:
        """A consistent read view (an LMDB read transaction), released at block end."""
        with self._guard.shared():
            txn = self.env.begin(write=False, buffers=False)
            view = ReadView(txn)
            try:
                yield view
            finally:
                view._txn = None
                txn.abort()
                del txn

    def pin_read(self) -> PinnedRead:
        """A read transaction that another thread may carry and must close.

        The snapshot writer fixes its image on the Raft thread (the applied
        index is exact there) and copies it on a worker thread. The pin holds
        the guard's shared side until ``close``, so a map resize or a restore
        never remaps or closes the environment under the copy: a restore
        waits, the apply's resize is deferred (``grow(wait_for_pins=False)``).
        """
        return PinnedRead(self)

    def resize_pending(self) -> bool:
        """True while a map growth waits for the open read views to close.

        A long-lived reader (a migration's snapshot) checks this and gives way,
        so that it never holds the writer up for long.
        """
        return self._guard._resizing

    def applied_index(self) -> int:
        with self.read() as txn:
            return keys.get_applied(txn)

    # ---- writes --------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Txn]:
        """One write transaction; the caller commits by leaving normally.

        ``lmdb.MapFullError`` escapes so that the caller can grow the map and
        retry the same work: nothing of the failed transaction is kept.
        """
        with self._write_lock, self._guard.shared():
            txn = self.env.begin(write=True)
            try:
                yield txn
            except BaseException:
                txn.abort()
                raise
            else:
                txn.commit()

    def disk_full(self) -> bool:
        """Whether free disk is below the reserve (checked at most once a second)."""
        if self.reserve_disk <= 0:
            return False
        now = time.monotonic()
        if now - self._disk_checked > 1.0:
            self._disk_checked = now
            st = os.statvfs(self.path)
            self._disk_ok = st.f_bavail * st.f_frsize >= self.reserve_disk
        return not self._disk_ok

    def at_max(self) -> bool:
        return self.map_size >= self.map_size_max

    def grow(self, wait_for_pins: bool = True) -> None:
        """Double the map, up to the maximum; StorageFull when already there.

        A resize waits for every open read. ``wait_for_pins=False`` (the Raft
        thread's apply) raises ResizeBusy instead while a snapshot image is
        being copied: that copy can take seconds, and a Raft thread waiting
        for it would stop heartbeating; the apply is retried at the next tick.
        """
        if self.at_max() or self.disk_full():
            raise StorageFull("storage full")
        if not wait_for_pins and self._pins:
            raise ResizeBusy("a snapshot image is being written")
        new = min(self.map_size * 2, self.map_size_max)
        with self._guard.exclusive():
            self.env.set_mapsize(new)
        self.map_size = new
        self.map_grows += 1

    def used_bytes(self) -> int:
        info = self.env.info()
        stat = self.env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    # ---- snapshots -----------------------------------------------------

    def snapshot(self, dest: str | os.PathLike[str]) -> int:
        """Copy a consistent image of the whole partition into ``dest``.

        LMDB's copy runs inside one read transaction, so the image is exactly
        the state at one applied index, which is returned. Safe to call from
        any thread while writes go on. The image is on disk when this returns
        (fsynced, and its directory entry too).
        """
        dest_path = Path(dest)
        dest_path.mkdir(parents=True, exist_ok=True)
        with self._guard.shared():
            txn = self.env.begin(write=False)
            try:
                index = keys.get_applied(txn)
                self.env.copy(str(dest_path), compact=True, txn=txn)
            finally:
                txn.abort()
        fsync_file(dest_path / "data.mdb")
        fsync_dir(dest_path)
        return index

    def restore(self, src: str | os.PathLike[str]) -> int:
        """Replace this partition's content with a snapshot made by ``snapshot``.

        The environment is closed, its files swapped for the snapshot's, and
        reopened. Returns the applied index of the restored image.

        Durable when it returns, in this order: the new image is written to a
        temporary file and fsynced, renamed over ``data.mdb``, and the directory
        is fsynced (without that, a power loss can bring the old ``data.mdb``
        back while Raft already counts the snapshot as installed).
        """
        src_file = Path(src) / "data.mdb"
        with self._write_lock, self._guard.exclusive():
            self.env.close()
            tmp = self.path / "data.mdb.restore"
            with open(src_file, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, self.path / "data.mdb")
            lock = self.path / "lock.mdb"
            if lock.exists():
                lock.unlink()
            fsync_dir(self.path)
            self.env = lmdb.open(
                str(self.path),
                map_size=max(self.map_size, os.path.getsize(self.path / "data.mdb") * 2),
                subdir=True,
                sync=self.sync,
                metasync=self.sync,
                max_dbs=0,
                max_readers=4096,
            )
            self.map_size = self.env.info()["map_size"]
        return self.applied_index()

    def content_hash(self, prefix: bytes = b"") -> str:
        """sha256 over every (key, value) under ``prefix``: replicas compare these."""
        h = hashlib.sha256()
        with self.read() as txn:
            cur = txn.cursor()
            if not cur.set_range(prefix):
                return h.hexdigest()
            for k, v in cur:
                if not k.startswith(prefix):
                    break
                h.update(struct.pack(">I", len(k)))
                h.update(k)
                h.update(struct.pack(">I", len(v)))
                h.update(v)
        return h.hexdigest()

    def close(self) -> None:
        """Flush and close; a store closed here is known to be whole at its next open."""
        with self._write_lock, self._guard.exclusive():
            try:
                self.env.sync(True)
                (self.path / CLEAN_MARK).touch()
            except (lmdb.Error, OSError):
                pass  # closing anyway: the next open treats it as unclean
            self.env.close()
