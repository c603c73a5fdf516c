"""A node's service: what every API of the node (HTTP, ZAP, MCP, SSE) calls.

The shared plumbing (proposals stamped with time and ids, reads on the local
replica or a peer's, read barriers, forwarding to a replica) is
:class:`ServiceCore`; each concept's operations live in their own class and
module, reached as ``service.<concept>.<operation>``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hanzo_tasks.cluster.service.activities import Activities
from hanzo_tasks.cluster.service.batches import Batches
from hanzo_tasks.cluster.service.core import ServiceCore, wall_ms
from hanzo_tasks.cluster.service.namespaces import Namespaces
from hanzo_tasks.cluster.service.records import Records
from hanzo_tasks.cluster.service.results import Results
from hanzo_tasks.cluster.service.schedules import Schedules
from hanzo_tasks.cluster.service.workflows import Workflows
from hanzo_tasks.replication import NodeReplicator


class Service(ServiceCore):
    """One node's engine operations over its replicator, concept by concept."""

    def __init__(self, cfg: Any, replicator: NodeReplicator, *, node_id: str,
                 clock: Callable[[], int] = wall_ms) -> None:
        super().__init__(cfg, replicator, node_id=node_id, clock=clock)
        self.namespaces = Namespaces(self)
        self.workflows = Workflows(self)
        self.activities = Activities(self)
        self.schedules = Schedules(self)
        self.batches = Batches(self)
        self.records = Records(self)
        self.results = Results(self)
