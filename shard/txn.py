"""The two shapes of LMDB transaction the shard code is written against.

The store opens every transaction without ``buffers=True``, so keys and values
come back as ``bytes`` (``lmdb.Transaction[bytes]``). Reads are also handed a
``store.ReadView`` (a transaction that cannot outlive its block), so read-side
code asks only for what both provide: ``get`` and ``cursor``.
"""

from __future__ import annotations

from typing import Protocol, TypeAlias

import lmdb

# A read-write (or read) transaction of the store, as ``apply`` uses it.
Txn: TypeAlias = "lmdb.Transaction[bytes]"


class ReadTxn(Protocol):
    """A consistent read: an LMDB transaction or a ``store.ReadView``."""

    def get(self, key: bytes, default: None = None) -> bytes | None: ...

    def cursor(self) -> lmdb.Cursor[bytes]: ...
