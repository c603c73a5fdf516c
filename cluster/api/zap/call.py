"""One ZAP request as an op handler sees it, and the handler's signature."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from hanzo_tasks.cluster.api.zap.fields import Json


@dataclass(frozen=True, slots=True)
class Call:
    """One request as a handler sees it: the stored org and the resolved namespace."""

    node: Any
    org: str
    ns: str
    body: Json
    conn: Any = None

    @property
    def service(self) -> Any:
        return self.node.service


Handler = Callable[[Call], Awaitable[Json]]
