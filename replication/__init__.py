"""The Replicator boundary and its implementations."""

from hanzo_tasks.replication.base import (
    ChannelHandler,
    ClusterControl,
    ClusterDirectory,
    LeadershipListener,
    Listener,
    NodeReplicator,
    NotLeader,
    NotReplica,
    PeerListener,
    ReadIndexUnavailable,
    Replicator,
    Result,
)
from hanzo_tasks.replication.local import LocalReplicator

__all__ = [
    "ChannelHandler",
    "ClusterControl",
    "ClusterDirectory",
    "LeadershipListener",
    "Listener",
    "LocalReplicator",
    "NodeReplicator",
    "NotLeader",
    "NotReplica",
    "PeerListener",
    "ReadIndexUnavailable",
    "Replicator",
    "Result",
]
