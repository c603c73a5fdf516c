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
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos.nodes import NodeOptions
from chaos.testbed import Testbed
from chaos.windows import (
    COMPACTION_PHASES,
    compaction_state,
    group_of,
    journal_first_index,
    phase_files,
    snapshot_entries,
    swapped_images,
)


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


# --------------------------------------------------------------------------- Raft windows (issue 23)


class ThrottleLinks(Fault):
    """Directed links carry at most ``rate`` bytes/s (``ProxyHub.throttle``): the
    sender's buffers fill and its writes back up, nothing is lost. Heal lifts it."""

    kind = "throttle"

    def __init__(self, targets: list[str], links: list[tuple[str, str]], rate: int) -> None:
        super().__init__(targets, links=[list(x) for x in links], rate=rate)
        self.links = list(links)

    async def inject(self, tb: Testbed) -> None:
        await asyncio.to_thread(tb.hub.throttle, self.links, self.record.params["rate"])

    async def heal(self, tb: Testbed) -> None:
        await asyncio.to_thread(tb.hub.heal, self.links)


JOURNAL_FULL_ENV = "CHAOS_JOURNAL_FULL"
PRELOAD = Path(__file__).resolve().parent / "preload"


def journal_full_trigger(tb: Testbed, node: str) -> Path:
    """The file whose existence makes ``node``'s journal writes fail with ENOSPC."""
    return tb.root / f"{node}.journal-full"


def journal_full_env(tb: Testbed) -> dict[str, dict[str, str]]:
    """Per node, the environment that loads ``chaos/preload/sitecustomize.py`` with its trigger file.

    Harmless while the trigger does not exist (a set lookup per journal write).
    The same file also arms the product's own fault point where it has one
    (``HANZO_TASKS_FAULTS=journal.flush@<file>``, ``replication/raft/faults.py``);
    a server without it ignores the variable, and the shim does the work.
    """
    path = os.pathsep.join(p for p in (str(PRELOAD), os.environ.get("PYTHONPATH", "")) if p)
    return {nid: {"PYTHONPATH": path, JOURNAL_FULL_ENV: str(journal_full_trigger(tb, nid)),
                  "HANZO_TASKS_FAULTS": f"journal.flush@{journal_full_trigger(tb, nid)}"} for nid in tb.ids}


class JournalFull(Fault):
    """The targets' Raft journals get ENOSPC on every write and fsync (see
    ``chaos/preload/sitecustomize.py``); heal gives the space back. The node is
    not restarted: whether it recovers, stalls or exits is what is observed."""

    kind = "journal-full"

    async def inject(self, tb: Testbed) -> None:
        for t in self.targets:
            if tb.normal[t].env.get(JOURNAL_FULL_ENV) is None:
                self.record.notes.append(f"{t} was not started with the journal shim: nothing injected")
            journal_full_trigger(tb, t).write_text("full\n")

    async def heal(self, tb: Testbed) -> None:
        for t in self.targets:
            journal_full_trigger(tb, t).unlink(missing_ok=True)


def _images(raft: Path, names: list[str]) -> dict[str, tuple[int, int]]:
    out = {}
    for name in names:
        if name.endswith(".snapshot"):
            try:
                st = os.stat(raft / name)
            except OSError:
                continue
            out[name] = (st.st_ino, st.st_mtime_ns)
    return out


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _identities(raft: Path, parts: Path, names: list[str], part_names: list[str]) -> dict[str, tuple[int, int, int]]:
    out = {}
    for d, ns in ((raft, names), (parts, part_names)):
        for name in ns:
            try:
                st = os.stat(d / name)
            except OSError:
                continue
            out[str(d / name)] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def watch_phase(data_dir: Path, phases: tuple[str, ...], timeout: float, stop: threading.Event | None = None,
                groups: set[str] | None = None, poll: float = 0.002) -> tuple[str, str, float] | None:
    """Poll a node's files until it shows one of ``phases`` (``chaos.windows``); (phase, group, seconds waited).

    A file counts only when it appeared or changed after this call began (a
    leftover of an earlier crash is no window). ``swapped``: a
    ``<g>.snapshot`` replaced since then. ``groups``: only these groups count
    (None: any; a restore's scratch directory names no group and always
    counts). None when ``timeout`` passed first. Runs on a worker thread;
    2 ms between looks.
    """
    raft, parts = data_dir / "raft", data_dir / "partitions"
    want_parts = "restoring" in phases
    t0 = time.monotonic()
    names0 = _listdir(raft)
    base = _identities(raft, parts, names0, _listdir(parts) if want_parts else [])
    images0 = _images(raft, names0) if "swapped" in phases else {}
    while time.monotonic() - t0 < timeout and not (stop is not None and stop.is_set()):
        names = _listdir(raft)
        part_names = _listdir(parts) if want_parts else []
        seen = phase_files(names, part_names)
        fresh: dict[str, tuple[int, int, int]] | None = None
        for ph in phases:
            if ph == "swapped":
                hit = [g for g in swapped_images(images0, _images(raft, names)) if groups is None or g in groups]
            elif seen.get(ph):
                if fresh is None:
                    now = _identities(raft, parts, names, part_names)
                    fresh = {k: v for k, v in now.items() if base.get(k) != v}
                changed = {Path(k).name for k in fresh}
                hit = [g for g, name in seen[ph] if name in changed
                       and (groups is None or g in groups or ph == "restoring")]
            else:
                hit = []
            if hit:
                return ph, hit[0], time.monotonic() - t0
        time.sleep(poll)
    return None


def _head(path: Path, n: int = 1 << 16) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError:
        return b""


def files_state(data_dir: Path, group: str) -> dict[str, Any]:
    """What a killed node's files say about group ``group``'s compaction (``chaos.windows.compaction_state``)."""
    raft = data_dir / "raft"
    head = _head(raft / f"{group}.snapshot", 12)
    if len(head) == 12:  # the header holds the last two commands, which may be large
        head = _head(raft / f"{group}.snapshot", 12 + int.from_bytes(head[8:12], "big"))
    entries = snapshot_entries(head)
    first = journal_first_index(_head(raft / f"{group}.journal"))
    return {"image_entries": entries, "journal_first": first, "state": compaction_state(entries, first),
            "leftovers": sorted(n for n in _listdir(raft) if n.startswith(f"{group}.") and
                                n not in (f"{group}.snapshot", f"{group}.journal", f"{group}.journal.meta"))}


class KillInWindow(Fault):
    """SIGKILL a node the moment its files show one of ``phases`` (``watch_phase``),
    after ``delay`` seconds; restart it on heal. Not killed (the window never
    came within ``timeout``): nothing to heal, and the record says so."""

    kind = "kill-in-window"

    def __init__(self, targets: list[str], phases: tuple[str, ...], timeout: float = 20.0, delay: float = 0.0,
                 groups: set[str] | None = None, **params: Any) -> None:
        super().__init__(targets, phases=list(phases), timeout=timeout, delay=round(delay, 4),
                         groups=sorted(groups) if groups else None, **params)
        self.phases, self.timeout, self.delay, self.groups = phases, timeout, delay, groups
        self.killed = False
        self.stop = threading.Event()

    async def inject(self, tb: Testbed) -> None:
        node = tb.by_id[self.targets[0]]

        def watch_and_kill() -> tuple[str, str, float] | None:
            hit = watch_phase(node.spec.data_dir, self.phases, self.timeout, self.stop, self.groups)
            if hit is not None and node.running:
                if self.delay > 0:
                    time.sleep(self.delay)
                node.kill()
            return hit

        hit = await asyncio.to_thread(watch_and_kill)
        if hit is None:
            self.record.notes.append(f"no {'/'.join(self.phases)} seen on {node.node_id} within {self.timeout:g}s: "
                                     "not killed (window not reached)")
            return
        self.killed = True
        phase, group, waited = hit
        self.record.params.update(hit=phase, group=group, waited_s=round(waited, 3))
        if phase in COMPACTION_PHASES and group_of(f"{group}.x") is not None:
            self.record.params["files"] = files_state(node.spec.data_dir, group)

    async def heal(self, tb: Testbed) -> None:
        self.stop.set()
        if self.killed:
            for t in self.targets:
                await tb.restart(tb.by_id[t])
