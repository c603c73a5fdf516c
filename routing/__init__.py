"""Rendezvous (HRW) routing, partition placement and the membership view.

A leaf package: it imports nothing from the project (stdlib only), so every
layer can route without pulling in the server.
"""

from hanzo_tasks.routing.hrw import partition_of, rank, score, winner
from hanzo_tasks.routing.placement import (
    LEADER_SEED,
    Membership,
    MembershipWatcher,
    NoOwner,
    PartitionPlacement,
    Pin,
    Placement,
    PlacementTable,
    Subscriber,
    Zones,
    distinct_domains,
    failure_domain,
    partition_plan,
    preferred_leaders,
    replicas,
    spread_fill,
)

__all__ = [
    "LEADER_SEED",
    "Membership",
    "MembershipWatcher",
    "NoOwner",
    "PartitionPlacement",
    "Pin",
    "Placement",
    "PlacementTable",
    "Subscriber",
    "Zones",
    "distinct_domains",
    "failure_domain",
    "partition_of",
    "partition_plan",
    "preferred_leaders",
    "rank",
    "replicas",
    "score",
    "spread_fill",
    "winner",
]
