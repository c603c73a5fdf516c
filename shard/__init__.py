"""Shard state: the LMDB store of a partition, its key layout, the commands
and the deterministic state machine that applies them. Imports nothing of the
project but ``protocol``."""

from hanzo_tasks.shard import reads
from hanzo_tasks.shard.commands import (
    BATCH_OVERHEAD,
    OPS,
    CommandError,
    decode,
    encode,
    encode_batch,
)
from hanzo_tasks.shard.machine import STORAGE_FULL, StateMachine
from hanzo_tasks.shard.store import PartitionStore, StorageFull

__all__ = [
    "BATCH_OVERHEAD",
    "OPS",
    "STORAGE_FULL",
    "CommandError",
    "PartitionStore",
    "StateMachine",
    "StorageFull",
    "decode",
    "encode",
    "encode_batch",
    "reads",
]
