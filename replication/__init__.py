"""The Replicator boundary and its implementations."""

from hanzo_tasks.replication.base import Listener, NotLeader, NotReplica, Replicator, Result
from hanzo_tasks.replication.local import LocalReplicator

__all__ = ["Listener", "LocalReplicator", "NotLeader", "NotReplica", "Replicator", "Result"]
