"""A durable Raft journal for pysyncobj: fsynced, checksummed, never pickled.

pysyncobj's ``FileJournal`` writes through an mmap that is never fsynced and
stores its meta (currentTerm, votedFor, commit index) with pickle. Raft's
safety argument assumes the opposite: an entry is on stable storage before
this node acknowledges or sends it, and currentTerm/votedFor are on stable
storage before a vote is answered. ``DurableJournal`` is a drop-in
``pysyncobj.journal.Journal`` that gives those guarantees through one explicit
call, :meth:`DurableJournal.flush`, which the integrator makes before any
message of the group leaves the node and before each tick (so the leader's own
new entries are durable before the tick that commits and applies them).

Files (``path`` is what would be ``conf.journalFile``):

``path``
    The log. A 16-byte header (magic ``HZTJRNL\\0``, u16 format version, u16
    flags = 0, u32 CRC32 of the previous 12 bytes), then records appended
    back to back, each a fixed little-endian header and the raw command::

        u32 crc | u32 length | u64 idx | u64 term | command[length]

    ``crc`` is CRC32 over ``length..command`` *seeded with the previous
    record's crc* (the first record is seeded with the header's crc). The
    chain is what makes in-place reuse of file space safe: after a truncation
    (conflict or ``clear``) and a crash before the next fsync, a stale record
    left behind the new ones cannot validate, because its predecessor is no
    longer the one it was chained to.
``path + ".meta"``
    A msgpack map ``{"v": 1, "term": int, "votedFor": str | int | bytes | None,
    "commitIndex": int}``, replaced atomically (write a temp file, fsync,
    rename, fsync the directory).
``path + ".compact"`` / ``path + ".meta.tmp"``
    Temporaries of an atomic replace; a leftover one is a crash before its
    rename and is deleted on open.

Recovery on open: records are read until the end of the file or the first
record that is short (torn) or fails its CRC; the file is truncated there (and
the truncation fsynced), so appends continue from the last good record. A bad
header or an unreadable meta file raises :class:`JournalCorruptError` instead:
forgetting the term or the vote can let a node vote twice in a term, so that
needs an operator, not a guess. The commit index read back is clamped to the
last index in the log: a lower commit index is always safe (the leader
re-establishes it), a higher one would let pysyncobj treat entries it does not
have as committed.

Durability points:

- ``add`` only buffers; ``flush`` writes the buffer with one ``write`` and one
  ``fsync`` however many entries it holds, and is free (no syscall) when
  nothing changed.
- ``deleteEntriesFrom`` truncates the file at the first dropped record's
  offset when that record already reached the OS (else it only trims the
  buffer); the truncation is made durable by the next ``flush``.
- ``clear`` truncates the log back to its header; durable at the next flush.
- ``deleteEntriesTo`` (compaction) rewrites the kept entries into
  ``path.compact``, fsyncs it, renames it over the log and fsyncs the
  directory before returning, so the file does not grow forever and a crash
  at any point leaves either the whole old log or the whole new one. It is
  eager on purpose: pysyncobj, on restart, drops the whole journal when its
  first two entries are not the ones recorded in its full dump, so the prefix
  must be gone from disk as soon as pysyncobj believes it is. It costs
  O(kept entries), which pysyncobj keeps small (it compacts up to the last
  applied entry).
- ``setCurrentTerm`` marks the meta dirty; ``flush`` rewrites it before it
  returns. The commit index changes far more often and needs no durability
  (a stale, lower value is safe), so it is written only by
  ``onOneSecondTimer``, by ``_destroy``, and along with a term change.
  Whenever the meta is written, the log is fsynced first, so a persisted
  commit index never points past the durable log.

Errors: an ``OSError`` while writing, truncating or syncing leaves the file in
an unknown state (after a failed fsync the kernel may already have dropped the
dirty pages), so the journal becomes *failed*: every later mutation or flush
raises :class:`JournalFailedError`, and the node must restart and recover
from disk. Reads keep working.

Threading: a journal belongs to the one Raft thread that ticks its group, as
pysyncobj's own journals do; it takes no locks and must not be used from two
threads at once. Nor must two processes open the same path; that is for the
node to prevent (one lock on its data directory), not for each journal.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import zlib
from array import array
from collections.abc import Iterator
from types import TracebackType
from typing import Any, Final, overload

import msgpack
from hanzo_tasks.replication.raft import faults
from pysyncobj.journal import Journal

__all__ = [
    "DurableJournal",
    "Entry",
    "JournalClosedError",
    "JournalCorruptError",
    "JournalError",
    "JournalFailedError",
]

log = logging.getLogger("tasks.raft.journal")

#: One log entry as pysyncobj sees it: (command, log index, term).
Entry = tuple[bytes, int, int]
NodeId = str | int | bytes | None

MAGIC: Final = b"HZTJRNL\x00"
FORMAT_VERSION: Final = 1
_HEADER_BODY: Final = struct.Struct("<8sHH")
_U32: Final = struct.Struct("<I")
_HEADER: Final = _HEADER_BODY.pack(MAGIC, FORMAT_VERSION, 0)
_HEADER_CRC: Final = zlib.crc32(_HEADER)
HEADER: Final = _HEADER + _U32.pack(_HEADER_CRC)
HEADER_SIZE: Final = len(HEADER)  # 16

#: crc, then the part the crc covers: length, idx, term.
_REC_CRC: Final = _U32
_REC_TAIL: Final = struct.Struct("<IQQ")
_REC_HEAD: Final = struct.Struct("<IIQQ")
REC_HEADER_SIZE: Final = _REC_HEAD.size  # 24
MAX_COMMAND: Final = 0xFFFFFFFF

META_VERSION: Final = 1
DEFAULT_COMMIT_INDEX: Final = 1  # what pysyncobj's FileJournal returns for a new journal

_COMPACT_SUFFIX: Final = ".compact"
_META_SUFFIX: Final = ".meta"
_META_TMP_SUFFIX: Final = ".meta.tmp"
_REWRITE_CHUNK: Final = 1 << 20

_O_CLOEXEC: Final = getattr(os, "O_CLOEXEC", 0)
_O_BINARY: Final = getattr(os, "O_BINARY", 0)


class JournalError(Exception):
    """Base class of the journal's own errors."""


class JournalCorruptError(JournalError):
    """The files on disk are not a journal this code can trust (header or meta)."""


class JournalFailedError(JournalError):
    """A previous I/O error left the file in an unknown state; restart and recover."""


class JournalClosedError(JournalError):
    """The journal was closed with ``_destroy``."""


def _fsync_dir(directory: str) -> None:
    """Make a rename (or a file creation) in ``directory`` durable."""
    if not hasattr(os, "O_DIRECTORY"):  # pragma: no cover - Windows has no directory fsync
        return
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """``os.write`` until everything is written (a write may be short)."""
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _check_node_id(node_id: Any) -> None:
    if node_id is not None and not isinstance(node_id, str | int | bytes):
        raise TypeError(f"votedForNodeId must be str, int, bytes or None, not {type(node_id).__name__}")


class DurableJournal(Journal):  # type: ignore[misc]  # pysyncobj has no type information
    """pysyncobj ``Journal`` whose changes become durable at :meth:`flush`.

    Entries are kept in memory (a list of ``(command, idx, term)`` tuples, as
    ``MemoryJournal`` and ``FileJournal`` do) so ``__getitem__`` never touches
    the disk; the file is only appended to, truncated, or replaced.

    ``sync=False`` (durability ``nosync``) keeps the same file format and the
    same write pattern but never calls fsync: a process crash loses nothing
    that was flushed, an OS crash or power loss may lose recent changes.
    """

    def __init__(self, path: str, *, sync: bool = True) -> None:
        self._path = os.fspath(path)
        self._dir = os.path.dirname(os.path.abspath(self._path))
        self._meta_path = self._path + _META_SUFFIX
        self._sync = sync

        self._entries: list[Entry] = []
        self._offsets = array("Q")  # file offset of each entry's record
        self._crcs = array("I")  # chain crc of each entry's record
        self._pending = bytearray()  # records not yet handed to the OS
        self._written_end = HEADER_SIZE  # file length as far as the OS knows
        self._log_unsynced = False  # the OS has log changes not yet fsynced
        self._failed: BaseException | None = None
        self._fd: int | None = None

        self._term = 0
        self._voted_for: NodeId = None
        self._commit_index = DEFAULT_COMMIT_INDEX
        self._persisted_commit_index = DEFAULT_COMMIT_INDEX
        self._meta_dirty = False  # term/votedFor changed since the meta was written

        #: bytes dropped from the log's tail by recovery on open (torn or corrupt).
        self.recovered_dropped_bytes = 0

        self._remove_stale_temporaries()
        self._load_meta()
        self._open_log()
        last = self._entries[-1][1] if self._entries else DEFAULT_COMMIT_INDEX
        self._commit_index = min(self._commit_index, last)

    # ---- pysyncobj's Journal interface -------------------------------------

    def add(self, command: bytes, idx: int, term: int) -> None:
        """Append an entry; durable at the next :meth:`flush`."""
        self._check_writable()
        if not isinstance(command, bytes):
            if not isinstance(command, bytearray | memoryview):
                raise TypeError(f"command must be bytes, not {type(command).__name__}")
            command = bytes(command)
        if len(command) > MAX_COMMAND:
            raise ValueError(f"command of {len(command)} bytes is too large for one record")
        try:
            tail = _REC_TAIL.pack(len(command), idx, term)
        except struct.error as e:
            raise ValueError(f"idx and term must be integers in [0, 2**64): {idx!r}, {term!r}") from e
        prev = self._crcs[-1] if self._crcs else _HEADER_CRC
        crc = zlib.crc32(command, zlib.crc32(tail, prev))
        offset = self._written_end + len(self._pending)
        self._pending += _REC_CRC.pack(crc)
        self._pending += tail
        self._pending += command
        self._entries.append((command, idx, term))
        self._offsets.append(offset)
        self._crcs.append(crc)

    @property
    def log_bytes(self) -> int:
        """Bytes of the log (written and pending): what compaction would free."""
        return self._written_end + len(self._pending)

    def clear(self) -> None:
        """Drop every entry: the log is cut back to its header, durable at the next flush."""
        self._check_writable()
        self._entries = []
        self._offsets = array("Q")
        self._crcs = array("I")
        self._truncate_at(HEADER_SIZE)

    def deleteEntriesFrom(self, entryFrom: int) -> None:  # noqa: N802 - pysyncobj's name
        """Drop the entries at list positions ``entryFrom`` and after (conflict truncation).

        ``entryFrom`` is a position in this journal, not a Raft index:
        ``SyncObj.__deleteEntriesFrom`` passes ``fromIDx - self[0][1]``. It
        follows ``del list[entryFrom:]`` exactly, negative values included.
        """
        self._check_writable()
        keep = slice(entryFrom, None).indices(len(self._entries))[0]
        if keep == len(self._entries):
            return
        cut = self._offsets[keep]
        del self._entries[keep:]
        del self._offsets[keep:]
        del self._crcs[keep:]
        self._truncate_at(cut)

    def deleteEntriesTo(self, entryTo: int) -> None:  # noqa: N802 - pysyncobj's name
        """Drop the entries before list position ``entryTo`` (compaction), at once and durably.

        Follows ``list[entryTo:]`` exactly. The kept entries are rewritten into
        a new file that atomically replaces the log (see the module docstring
        for why this is eager); on return everything in the journal, the
        entries not yet flushed included, is on disk.
        """
        self._check_writable()
        start = slice(entryTo, None).indices(len(self._entries))[0]
        if start == 0:
            return
        self._rewrite(self._entries[start:])

    @overload
    def __getitem__(self, item: int) -> Entry: ...

    @overload
    def __getitem__(self, item: slice) -> list[Entry]: ...

    def __getitem__(self, item: int | slice) -> Entry | list[Entry]:
        """The ``(command, idx, term)`` at a list position, or a list of them for a slice."""
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self._entries)

    def _destroy(self) -> None:
        """Flush everything (the commit index included) and close; idempotent.

        pysyncobj calls this from ``SyncObj._doDestroy``. A journal that
        already failed is closed without writing anything more.
        """
        if self._fd is None:
            return
        try:
            if self._failed is None:
                self.flush()
                self._persist_commit_index()
        finally:
            fd, self._fd = self._fd, None
            os.close(fd)

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # noqa: N802, N803
        """Remember the commit index; written lazily (see the module docstring)."""
        self._commit_index = raftCommitIndex

    def getRaftCommitIndex(self) -> int:  # noqa: N802
        return self._commit_index

    def setCurrentTerm(self, term: int, votedForNodeId: NodeId) -> None:  # noqa: N802, N803
        """Set currentTerm and votedFor; durable when the next :meth:`flush` returns."""
        self._check_writable()
        _check_node_id(votedForNodeId)
        if not isinstance(term, int) or term < 0:
            raise ValueError(f"term must be a non-negative integer: {term!r}")
        if term == self._term and votedForNodeId == self._voted_for:
            return
        self._term = term
        self._voted_for = votedForNodeId
        self._meta_dirty = True

    def getCurrentTerm(self) -> int:  # noqa: N802
        return self._term

    def getVotedForNodeId(self) -> NodeId:  # noqa: N802
        return self._voted_for

    def onOneSecondTimer(self) -> None:  # noqa: N802
        """Persist the latest commit index (after the log it refers to)."""
        if self._fd is None or self._failed is not None:
            return
        self._persist_commit_index()

    # ---- ours ----------------------------------------------------------------

    @property
    def path(self) -> str:
        return self._path

    @property
    def sync(self) -> bool:
        return self._sync

    @property
    def closed(self) -> bool:
        return self._fd is None

    @property
    def failed(self) -> bool:
        return self._failed is not None

    @property
    def dirty(self) -> bool:
        """Whether :meth:`flush` has work to do (a flush of a clean journal makes no syscall)."""
        return bool(self._pending) or self._log_unsynced or self._meta_dirty

    def flush(self) -> None:
        """Make every change so far durable: log entries, truncations, term and vote.

        One write and one fsync of the log for all the entries added since the
        last flush; the meta is rewritten only when term/votedFor changed.
        Call it before any message of the group leaves the node.
        """
        if self._failed is not None:
            self._check_writable()  # raises: a failed journal must not look durable
        if not (self._pending or self._log_unsynced or self._meta_dirty) or self._fd is None:
            return  # clean, or closed (closing flushed everything)
        self._flush_log()
        if self._meta_dirty:
            self._write_meta(durable_rename=True)

    def close(self) -> None:
        """Same as ``_destroy``: flush and close."""
        self._destroy()

    def __enter__(self) -> DurableJournal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._destroy()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "failed" if self.failed else "open"
        return f"<DurableJournal {self._path!r} {state} entries={len(self._entries)} term={self._term}>"

    # ---- internals -----------------------------------------------------------

    def _check_writable(self) -> None:
        if self._failed is not None:
            raise JournalFailedError(f"journal {self._path!r} failed earlier: {self._failed!r}")
        if self._fd is None:
            raise JournalClosedError(f"journal {self._path!r} is closed")

    def _fail(self, error: BaseException) -> None:
        log.error("journal %s failed, it must be reopened: %r", self._path, error)
        self._failed = error

    def _flush_log(self) -> None:
        """Hand the buffered records to the OS, then fsync them (and any truncation)."""
        assert self._fd is not None
        try:
            if faults.fault("journal.flush"):
                raise OSError(errno.ENOSPC, "No space left on device (injected fault journal.flush)")
            if self._pending:
                written = 0
                try:
                    with memoryview(self._pending) as view:
                        while written < len(view):
                            written += os.write(self._fd, view[written:])
                finally:
                    self._written_end += written
                    del self._pending[:written]
                self._log_unsynced = True
            if self._log_unsynced:
                if self._sync:
                    os.fsync(self._fd)
                self._log_unsynced = False
        except OSError as e:
            self._fail(e)
            raise

    def _truncate_at(self, cut: int) -> None:
        """Make the log end at ``cut`` (a record boundary) in the buffer and the file."""
        assert self._fd is not None
        if cut >= self._written_end:
            del self._pending[cut - self._written_end :]
            return
        self._pending.clear()
        try:
            os.ftruncate(self._fd, cut)
        except OSError as e:
            self._fail(e)
            raise
        self._written_end = cut
        self._log_unsynced = True

    def _rewrite(self, entries: list[Entry]) -> None:
        """Replace the log by a new file holding ``entries``, atomically and durably."""
        tmp = self._path + _COMPACT_SUFFIX
        offsets = array("Q")
        crcs = array("I")
        prev = _HEADER_CRC
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | _O_CLOEXEC | _O_BINARY, 0o644)
        except OSError as e:
            self._fail(e)
            raise
        try:
            buf = bytearray(HEADER)
            written = 0
            for command, idx, term in entries:
                tail = _REC_TAIL.pack(len(command), idx, term)
                prev = zlib.crc32(command, zlib.crc32(tail, prev))
                offsets.append(written + len(buf))
                crcs.append(prev)
                buf += _REC_CRC.pack(prev)
                buf += tail
                buf += command
                if len(buf) >= _REWRITE_CHUNK:
                    _write_all(fd, buf)
                    written += len(buf)
                    buf.clear()
            _write_all(fd, buf)
            written += len(buf)
            if self._sync:
                os.fsync(fd)
            os.replace(tmp, self._path)
        except OSError as e:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            self._fail(e)
            raise
        old, self._fd = self._fd, fd
        assert old is not None
        os.close(old)
        self._entries = entries
        self._offsets = offsets
        self._crcs = crcs
        self._pending.clear()
        self._written_end = written
        self._log_unsynced = False
        if self._sync:
            try:
                _fsync_dir(self._dir)
            except OSError as e:
                self._fail(e)
                raise

    def _persist_commit_index(self) -> None:
        """Write the meta if the commit index (or term/vote) changed, after the log."""
        if self._commit_index == self._persisted_commit_index and not self._meta_dirty:
            return
        self._check_writable()
        self._flush_log()
        # A commit-index-only rewrite carries the term and vote of the meta it
        # replaces, so the rename need not be durable: old or new, both are right.
        self._write_meta(durable_rename=self._meta_dirty)

    def _write_meta(self, *, durable_rename: bool) -> None:
        """Atomically replace the meta file: temp file, fsync, rename, fsync dir."""
        blob = msgpack.packb(
            {
                "v": META_VERSION,
                "term": self._term,
                "votedFor": self._voted_for,
                "commitIndex": self._commit_index,
            },
            use_bin_type=True,
        )
        tmp = self._path + _META_TMP_SUFFIX
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC | _O_BINARY, 0o644)
            try:
                _write_all(fd, blob)
                if self._sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._meta_path)
            if self._sync and durable_rename:
                _fsync_dir(self._dir)
        except OSError as e:
            self._fail(e)
            raise
        self._meta_dirty = False
        self._persisted_commit_index = self._commit_index

    # ---- open and recovery -----------------------------------------------------

    def _remove_stale_temporaries(self) -> None:
        for tmp in (self._path + _COMPACT_SUFFIX, self._path + _META_TMP_SUFFIX):
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _load_meta(self) -> None:
        try:
            with open(self._meta_path, "rb") as f:
                blob = f.read()
        except FileNotFoundError:
            return
        try:
            meta = msgpack.unpackb(blob, raw=False)
        except Exception as e:
            raise JournalCorruptError(f"unreadable journal meta {self._meta_path!r}: {e}") from e
        if not isinstance(meta, dict) or meta.get("v") != META_VERSION:
            raise JournalCorruptError(f"{self._meta_path!r} is not a version {META_VERSION} journal meta")
        term, voted, commit = meta.get("term"), meta.get("votedFor"), meta.get("commitIndex")
        if not isinstance(term, int) or not isinstance(commit, int) or term < 0:
            raise JournalCorruptError(f"bad values in journal meta {self._meta_path!r}: {meta!r}")
        try:
            _check_node_id(voted)
        except TypeError as e:
            raise JournalCorruptError(f"bad votedFor in journal meta {self._meta_path!r}") from e
        self._term = term
        self._voted_for = voted
        self._commit_index = self._persisted_commit_index = commit

    def _create_log(self) -> None:
        """Create an empty log atomically, so a log file always has a whole header."""
        tmp = self._path + _COMPACT_SUFFIX
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _O_CLOEXEC | _O_BINARY, 0o644)
        try:
            _write_all(fd, HEADER)
            if self._sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self._path)
        if self._sync:
            _fsync_dir(self._dir)

    def _open_log(self) -> None:
        try:
            with open(self._path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            self._create_log()
            data = HEADER
        if len(data) < HEADER_SIZE:
            if not HEADER.startswith(data):
                raise JournalCorruptError(f"{self._path!r} is not a journal (bad header)")
            self._create_log()  # a header-only file cut short: nothing to lose
            data = HEADER
        magic, version, _flags = _HEADER_BODY.unpack_from(data)
        if magic != MAGIC:
            raise JournalCorruptError(f"{self._path!r} is not a journal (bad magic)")
        if version != FORMAT_VERSION:
            raise JournalCorruptError(f"{self._path!r} has journal format {version}, expected {FORMAT_VERSION}")
        if data[:HEADER_SIZE] != HEADER:
            raise JournalCorruptError(f"{self._path!r} has a corrupt header")

        end = self._scan(data)
        self._written_end = end
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | _O_CLOEXEC | _O_BINARY)
        if end < len(data):
            self.recovered_dropped_bytes = len(data) - end
            log.warning(
                "journal %s: dropped %d bytes after the last good record (%d entries kept, "
                "torn write or corruption)",
                self._path, self.recovered_dropped_bytes, len(self._entries),
            )
            try:
                os.ftruncate(self._fd, end)
                if self._sync:
                    os.fsync(self._fd)
            except BaseException:
                os.close(self._fd)
                self._fd = None
                raise

    def _scan(self, data: bytes) -> int:
        """Load every valid record of ``data``; return the offset after the last one."""
        mv = memoryview(data)
        size = len(data)
        pos = HEADER_SIZE
        prev = _HEADER_CRC
        entries, offsets, crcs = self._entries, self._offsets, self._crcs
        unpack = _REC_HEAD.unpack_from
        while pos + REC_HEADER_SIZE <= size:
            crc, length, idx, term = unpack(data, pos)
            body = pos + REC_HEADER_SIZE
            end = body + length
            if end > size or zlib.crc32(mv[pos + 4 : end], prev) != crc:
                break
            entries.append((bytes(mv[body:end]), idx, term))
            offsets.append(pos)
            crcs.append(crc)
            prev = crc
            pos = end
        mv.release()
        return pos
