"""Disk full on a node's Raft journal, for the ``disk-full-journal`` chaos scenario.

Python imports ``sitecustomize`` at start-up from ``sys.path``; the harness
puts this directory first on a chaos node's ``PYTHONPATH`` and names a
trigger file in ``CHAOS_JOURNAL_FULL``. While that file exists, every
``os.write``/``os.fsync``/``os.fdatasync``/``os.ftruncate`` on a file the
node opened (with ``os.open``) under a ``raft/`` directory with ``.journal``
in its name (the log, its ``.compact`` rewrite, its ``.meta`` and their
temporaries) fails with ``ENOSPC``, exactly as on a full filesystem; when
the file is removed, space is back. Nothing else in the node is touched: its
LMDB stores (written by the C library), its snapshots, sockets and logs work
as usual.

Why not a real full disk: a small tmpfs or a loop device needs root and is
not portable, filling the machine's disk would hit every other process, and
``RLIMIT_FSIZE`` would cap the LMDB files too. The existing ``disk-full``
scenario shrinks the LMDB map instead; this is its counterpart for the
journal, and it can be switched on and off while the node runs.

Without ``CHAOS_JOURNAL_FULL`` this module does nothing at all.
"""

from __future__ import annotations

import errno
import os

_TRIGGER = os.environ.get("CHAOS_JOURNAL_FULL")


def _is_journal(path: object) -> bool:
    try:
        p = os.fsdecode(path)  # type: ignore[arg-type]
    except TypeError:
        return False
    parts = p.replace("\\", "/").split("/")
    return len(parts) >= 2 and parts[-2] == "raft" and ".journal" in parts[-1]


if _TRIGGER:
    _real_open = os.open
    _real_close = os.close
    _real_write = os.write
    _real_fsync = os.fsync
    _real_fdatasync = getattr(os, "fdatasync", None)
    _real_ftruncate = os.ftruncate
    _journal_fds: set[int] = set()
    _hits = [0]

    def _full() -> bool:
        return os.path.exists(_TRIGGER)  # type: ignore[arg-type]

    def _check(fd: int) -> None:
        if fd in _journal_fds and _full():
            _hits[0] += 1
            if _hits[0] == 1 or _hits[0] % 1000 == 0:
                _real_write(2, f"chaos: ENOSPC injected on a journal write (#{_hits[0]})\n".encode())
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def _open(path, flags, mode=0o777, *, dir_fd=None):  # type: ignore[no-untyped-def]
        fd = _real_open(path, flags, mode, dir_fd=dir_fd)
        if _is_journal(path):
            _journal_fds.add(fd)
        else:
            _journal_fds.discard(fd)
        return fd

    def _close(fd: int) -> None:
        _journal_fds.discard(fd)
        _real_close(fd)

    def _write(fd: int, data) -> int:  # type: ignore[no-untyped-def]
        _check(fd)
        return _real_write(fd, data)

    def _fsync(fd) -> None:  # type: ignore[no-untyped-def]
        if isinstance(fd, int):
            _check(fd)
        _real_fsync(fd)

    def _ftruncate(fd: int, length: int) -> None:
        _check(fd)
        _real_ftruncate(fd, length)

    os.open = _open
    os.close = _close
    os.write = _write
    os.fsync = _fsync
    os.ftruncate = _ftruncate
    if _real_fdatasync is not None:
        _fdatasync_real = _real_fdatasync

        def _fdatasync(fd) -> None:  # type: ignore[no-untyped-def]
            if isinstance(fd, int):
                _check(fd)
            _fdatasync_real(fd)

        os.fdatasync = _fdatasync
