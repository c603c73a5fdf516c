"""The service layer of a node: validation, commands stamped and proposed,
reads, forwarding to a replica; one module per concept."""

from hanzo_tasks.cluster.service.core import ServiceCore, wall_ms
from hanzo_tasks.cluster.service.service import Service

__all__ = ["Service", "ServiceCore", "wall_ms"]
