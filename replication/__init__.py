"""The Replicator boundary and its implementations."""

from replication.base import Listener, NotLeader, Replicator, Result
from replication.local import LocalReplicator

__all__ = ["Listener", "LocalReplicator", "NotLeader", "Replicator", "Result"]
