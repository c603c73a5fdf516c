"""The Replicator boundary (ARCHITECTURE.md "Replication").

Every node talks to its partitions through ``Replicator``, so the service
layer is the same whether one process applies commands at once
(LocalReplicator) or Raft groups commit them first (RaftReplicator). A node
also steers its cluster through ``ClusterControl``: the meta group (the
cluster directory), node-to-node calls, the peer port's channels, membership
and leadership hand-over.

Both implementations provide both interfaces (``NodeReplicator``), so callers
never test for a member's presence. A single node answers the control
questions trivially: it leads every partition, holds every partition, has no
peers and keeps no cluster directory. Code that only makes sense with peers
asks ``clustered``, the one question that tells the two apart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any, Protocol

from hanzo_tasks.replication.rpc import PeerRpc
from hanzo_tasks.shard import PartitionStore

Result = dict[str, Any]
#: listener(group, index, result) — called on the event loop for every applied entry.
Listener = Callable[[int, int, Result], None]
#: listener(group, leading) — called on the event loop when this node gains or loses a group.
LeadershipListener = Callable[[int, bool], None]
#: listener(peer, up) — called on the event loop when the link to a peer comes or goes.
PeerListener = Callable[[str, bool], None]
#: handler(peer, body) — called on the event loop for every frame of a peer-port channel.
ChannelHandler = Callable[[str, bytes], None]


class NotLeader(Exception):
    """This node cannot serve the group now (no quorum, not the leader, stopped)."""


class ReadIndexUnavailable(Exception):
    """No read point without a log entry now (a leader that has not committed in
    its term yet, no leader reachable): commit a barrier entry instead."""


class NotReplica(LookupError):
    """This node holds no replica of the group: ask a node that does."""


class Replicator(Protocol):
    """What the service layer needs of replication: propose, watch, read."""

    @property
    def node_id(self) -> str: ...

    @property
    def partitions(self) -> int:
        """The cluster's partition count (group ids 0 .. partitions-1)."""
        ...

    @property
    def clustered(self) -> bool:
        """True for a member of a multi-node cluster (peers, a meta group,
        forwarding to other replicas); False for a single node on its own."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def propose(self, group: int, command: bytes) -> Result:
        """Commit ``command`` to ``group`` and return the local apply's result."""
        ...

    async def read_index(self, group: int) -> int:
        """A linearizable read point: returns once this replica has applied every
        entry of ``group`` committed before the call, with the leader's authority
        confirmed by a majority after the call began (ReadIndex: no log entry).
        Returns the index it waited for. Raises ``ReadIndexUnavailable`` when that
        cannot be had now; the caller then commits a barrier entry."""
        ...

    def subscribe(self, listener: Listener) -> None: ...

    def on_leadership(self, listener: LeadershipListener) -> None:
        """``listener(group, leading)`` whenever this node gains or loses a group
        (never called where leadership cannot change)."""
        ...

    def is_leader(self, group: int) -> bool: ...

    def leader(self, group: int) -> str | None: ...

    def is_local(self, group: int) -> bool:
        """Whether this node holds a replica of ``group`` that serves reads."""
        ...

    def local_partitions(self) -> list[int]:
        """The partitions this node holds, ascending."""
        ...

    def replicas(self, group: int) -> tuple[str, ...]:
        """The nodes that hold ``group``."""
        ...

    def store(self, group: int) -> PartitionStore:
        """The local replica's store (for reads and snapshots)."""
        ...

    # ---- health and counters (readiness, /metrics, cluster info) -------------

    @property
    def stalled(self) -> AbstractSet[int]:
        """Groups whose next committed entry does not fit on this node's disk."""
        ...

    def failure(self) -> str | None:
        """Why this replicator cannot make progress any more, or None while it can."""
        ...

    def failure_kind(self) -> str | None:
        """What failed ("raft_thread", "journal" or "apply"), or None while nothing did."""
        ...

    @property
    def proposals(self) -> int:
        """Proposals made on this node."""
        ...

    @property
    def forwarded(self) -> int:
        """Proposals this node forwarded to a replica of a partition it does not hold."""
        ...


class ClusterDirectory(Protocol):
    """The meta group's state, as this node has applied it (``shard.meta.MetaMachine``)."""

    def partitions(self) -> int | None:
        """The partition count fixed at bootstrap (None: not bootstrapped)."""
        ...

    def members(self) -> dict[str, dict[str, Any]]: ...

    def voters(self) -> list[str] | None:
        """The meta group's voters (None: every member votes)."""
        ...

    def replica_sets(self) -> dict[int, list[str]]: ...

    def pins(self) -> dict[tuple[str, str], dict[str, Any]]:
        """Shards a migration moved off their HRW partition."""
        ...

    def jobs(self) -> list[dict[str, Any]]: ...

    def job(self, job_id: str) -> dict[str, Any] | None: ...


class ClusterControl(Protocol):
    """How a node steers its cluster: directory, peers, membership, leadership."""

    # ---- the meta group ------------------------------------------------------

    @property
    def meta_group(self) -> int:
        """The meta group's id (it follows the partitions' ids)."""
        ...

    @property
    def meta(self) -> ClusterDirectory: ...

    # ---- peers: calls, channels, links -----------------------------------------

    @property
    def rpc(self) -> PeerRpc:
        """Request/response calls to other nodes (channel FORWARD)."""
        ...

    @property
    def peer_addrs(self) -> Mapping[str, str]:
        """Peer id -> peer-port address of every node this one dials (not itself)."""
        ...

    def set_peer_addresses(self, peers: Mapping[str, str]) -> None: ...

    def on_peer_change(self, listener: PeerListener) -> None: ...

    def on_channel(self, channel: int, handler: ChannelHandler) -> None:
        """``handler(peer, body)`` for every frame of a node-level channel."""
        ...

    def send_peer(self, peer: str, channel: int, body: bytes) -> bool:
        """Queue one frame for ``peer`` (False: not queued)."""
        ...

    def peer_connected(self, peer: str) -> bool: ...

    def peer_responsive(self, peer: str) -> bool:
        """Connected, and heard from lately (a paused process keeps its links)."""
        ...

    def peer_rejected(self) -> dict[str, int]:
        """Frames the peer port rejected, by reason."""
        ...

    def peers_for(self, group: int, exclude: Sequence[str] = ()) -> list[str]:
        """The other replicas of ``group``, in the order to ask them."""
        ...

    def leader_hint(self, group: int) -> str | None:
        """The leader of a partition held elsewhere, as a replica last reported it."""
        ...

    def note_leader(self, group: int, leader: str) -> None: ...

    # ---- groups: status, membership, leadership ---------------------------------

    def voters(self, group: int) -> frozenset[str]: ...

    def group_status(self, group: int) -> dict[str, Any]:
        """leader, appliedIndex, commitIndex, term and hasQuorum of ``group``."""
        ...

    async def group_membership(self, group: int) -> dict[str, Any] | None: ...

    async def group_progress(self, group: int) -> dict[str, int] | None: ...

    async def change_membership(
        self, op: str, node_id: str, *, timeout: float = 30.0, groups: Sequence[int] | None = None
    ) -> None: ...

    async def change_group_membership(
        self, group: int, op: str, node_id: str, *, timeout: float = 20.0
    ) -> None: ...

    async def prepare_replica(
        self, group: int, node_id: str, nodes: Sequence[str], timeout: float = 5.0
    ) -> None: ...

    def set_replica_sets(self, layout: Mapping[int, Sequence[str]]) -> None: ...

    def transfer_leadership(self, group: int, to: str | None = None) -> None: ...

    # ---- the replication loop's health and counters (readiness, /metrics) -----

    @property
    def loop_at(self) -> float:
        """``time.monotonic()`` when the replication loop last went round."""
        ...

    def raft_thread_alive(self) -> bool: ...

    def snapshot_counts(self) -> dict[str, int]: ...

    @property
    def leader_changes_by_kind(self) -> Mapping[str, int]: ...

    @property
    def outcomes(self) -> Mapping[tuple[str, str], int]:
        """Proposals by (group kind, outcome)."""
        ...


class NodeReplicator(Replicator, ClusterControl, Protocol):
    """What a node holds: the Replicator boundary and its cluster control in one object."""
