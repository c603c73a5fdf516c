"""The Replicator boundary (ARCHITECTURE.md "Replication").

Every node talks to its partitions through this interface, so the service
layer is the same whether one process applies commands at once
(LocalReplicator) or a Raft group commits them first (RaftReplicator).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from hanzo_tasks.shard import PartitionStore

Result = dict[str, Any]
#: listener(group, index, result) — called on the event loop for every applied entry.
Listener = Callable[[int, int, Result], None]


class NotLeader(Exception):
    """This node cannot serve the group now (no quorum, not the leader, stopped)."""


class NotReplica(LookupError):
    """This node holds no replica of the group: ask a node that does."""


class Replicator(Protocol):
    partitions: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def propose(self, group: int, command: bytes) -> Result:
        """Commit ``command`` to ``group`` and return the local apply's result."""
        ...

    def subscribe(self, listener: Listener) -> None: ...

    def is_leader(self, group: int) -> bool: ...

    def leader(self, group: int) -> str | None: ...

    def store(self, group: int) -> PartitionStore:
        """The local replica's store (for reads and snapshots)."""
        ...
