"""The fault menu: each fault knows how to inject itself and how to heal.

A fault is applied to the testbed, never to the harness: processes are
signalled by process group (only the nodes this run started), links are cut
in the proxy hub. ``heal`` always restores the node's *normal* configuration
(a node restarted with a skewed clock or a tiny map comes back without).

Every injection and heal is timestamped on the history's clock, so the
report can line faults up with the operations they disturbed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from chaos.nodes import NodeOptions
from chaos.testbed import Testbed


@dataclass
class FaultRecord:
    kind: str
    targets: list[str]
    params: dict[str, Any] = field(default_factory=dict)
    injected_at: float | None = None
    healed_at: float | None = None
    ready_after_s: float | None = None
    notes: list[str] = field(default_factory=list)


class Fault:
    """Base: ``inject`` then ``heal``; both must be safe to call once each."""

    kind = "fault"

    def __init__(self, targets: list[str], **params: Any) -> None:
        self.record = FaultRecord(self.kind, targets, params)

    @property
    def targets(self) -> list[str]:
        return self.record.targets

    async def inject(self, tb: Testbed) -> None:
        raise NotImplementedError

    async def heal(self, tb: Testbed) -> None:
        raise NotImplementedError


class KillNode(Fault):
    """SIGKILL (a crash: no hand-over, no flush), restart on heal."""

    kind = "kill"

    async def inject(self, tb: Testbed) -> None:
        await asyncio.gather(*(asyncio.to_thread(tb.by_id[t].kill) for t in self.targets))

    async def heal(self, tb: Testbed) -> None:
        for t in self.targets:
            await tb.restart(tb.by_id[t])


class KillAll(KillNode):
    """Every node SIGKILLed at the same moment, all restarted on heal."""

    kind = "kill-all"


class RestartNode(Fault):
    """SIGTERM (the clean stop: leadership hand-over, drain), start again on heal."""

    kind = "restart"

    async def inject(self, tb: Testbed) -> None:
        for t in self.targets:
            rc = await asyncio.to_thread(tb.by_id[t].terminate, 30.0)
            if rc != 0:
                self.record.notes.append(f"{t} exited {rc} on SIGTERM (expected 0)")

    async def heal(self, tb: Testbed) -> None:
        for t in self.targets:
            await tb.restart(tb.by_id[t])


class PauseNode(Fault):
    """SIGSTOP: the process freezes with its sockets open (a GC pause, a VM
    stall); SIGCONT on heal. The frozen leader wakes up believing it leads."""

    kind = "pause"

    async def inject(self, tb: Testbed) -> None:
        for t in self.targets:
            tb.by_id[t].pause()

    async def heal(self, tb: Testbed) -> None:
        for t in self.targets:
            tb.by_id[t].resume()


class IsolateNode(Fault):
    """Cut a node off from every peer in both directions, sockets kept open
    (``chaos.proxy``). Clients still reach it: a stale leader must not serve."""

    kind = "partition"

    def __init__(self, targets: list[str], mode: str = "hold") -> None:
        super().__init__(targets, mode=mode)
        self.links: list[tuple[str, str]] = []

    async def inject(self, tb: Testbed) -> None:
        for t in self.targets:
            self.links += await asyncio.to_thread(tb.hub.isolate, t, tb.ids, self.record.params["mode"])

    async def heal(self, tb: Testbed) -> None:
        await asyncio.to_thread(tb.hub.heal, self.links)


class ClockSkew(Fault):
    """Restart a node with its proposer clock skewed (``TASKS_CLOCK_SKEW_MS``);
    restart it with the true clock on heal."""

    kind = "clock-skew"

    def __init__(self, targets: list[str], skew_ms: int) -> None:
        super().__init__(targets, skew_ms=skew_ms)

    async def inject(self, tb: Testbed) -> None:
        for t in self.targets:
            node = tb.by_id[t]
            await asyncio.to_thread(node.terminate, 30.0)
            normal = tb.normal[t]
            env = {**normal.env, "TASKS_CLOCK_SKEW_MS": str(self.record.params["skew_ms"])}
            await tb.restart(node, NodeOptions(list(normal.extra_args), env))

    async def heal(self, tb: Testbed) -> None:
        for t in self.targets:
            node = tb.by_id[t]
            await asyncio.to_thread(node.terminate, 30.0)
            await tb.restart(node)


class RestartNormal(Fault):
    """A node that was *started* faulty (e.g. a tiny LMDB map): injecting does
    nothing more, healing restarts it with its normal configuration."""

    kind = "restart-normal"

    async def inject(self, tb: Testbed) -> None:
        return None

    async def heal(self, tb: Testbed) -> None:
        for t in self.targets:
            node = tb.by_id[t]
            await asyncio.to_thread(node.terminate, 30.0)
            await tb.restart(node)
