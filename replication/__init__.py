"""The Replicator boundary and its implementations."""

from replication.base import Listener, NotLeader, NotReplica, Replicator, Result
from replication.local import LocalReplicator

__all__ = ["Listener", "LocalReplicator", "NotLeader", "NotReplica", "Replicator", "Result"]
