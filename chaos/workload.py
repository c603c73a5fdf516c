"""The recorded workload: concurrent clients spread over every node.

What each client does, chosen by its own ``random.Random`` derived from the
run's seed (so a seed reproduces every client's sequence of choices; the
interleaving with faults still depends on timing):

``start``   start a ``chaos.job`` workflow with a client-chosen workflowId and
            requestId on queue ``chaos`` (the worker process completes it). An
            attempt whose outcome is unknown (timeout, broken connection, 503)
            is retried with the *same* requestId, on the next node, until it
            is answered or the retry deadline passes; the op is ``ok``,
            ``failed`` or ``unknown`` overall.
``signal``  signal a register workflow with a unique requestId, retried the same
            way; the checker counts SIGNALED events per requestId.
``write``   set a register: ``POST …/workflows/<reg>/metadata {"summary": v}``
            with a value no other write uses. Not retried (a retried write
            could take effect twice, which a register model cannot express);
            an unknown outcome stays unknown.
``read``    read a register: ``GET …/workflows/<reg>``, the value being
            ``workflowExecutionInfo.userMetadata.summary`` (None before the
            first write).

Why workflow metadata is the register: it is one replicated field per
workflow, replaced whole by one command (SPEC §5.4 Metadata), and read back by
describe, which is served after a read barrier through the partition's leader
(SPEC §4.1 Reads), so a correct cluster makes it a linearizable read/write
register. It touches no history, so the register checks are independent of
the others. The register workflows run on a queue no worker serves
(``chaos-idle``), so they stay open for the whole run.

Schedules: ``setup`` creates three 1 s interval schedules in their own
namespace with overlap ALLOW_ALL (every nominal time starts a run, so "fired"
and "should have fired" can be compared slot by slot). Two have a catch-up
window far longer than any outage (every slot must fire exactly once), one
has a 3 s window (slots of a long outage may be missed, but must be counted).
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from chaos.api import FAILED, OK, UNKNOWN, Api, Reply
from chaos.history import History, Op

JOB_TYPE = "chaos.job"
TICK_TYPE = "chaos.tick"
REG_TYPE = "chaos.register"
QUEUE = "chaos"
IDLE_QUEUE = "chaos-idle"
SIGNAL_NAME = "chaos-sig"
SCHED_NS = "chaos-sched"
NS = "/v1/tasks/namespaces"

#: Retrying a write of unknown outcome: how long, and how long between tries.
RETRY_DEADLINE = 15.0
RETRY_PAUSE = (0.2, 0.5)


@dataclass(frozen=True)
class ScheduleDef:
    schedule_id: str
    catchup_s: int

    def body(self) -> dict[str, Any]:
        return {
            "scheduleId": self.schedule_id,
            "spec": {"interval": [{"interval": "1s"}]},
            "action": {"workflowType": {"name": TICK_TYPE}, "taskQueue": QUEUE},
            "policies": {"overlapPolicy": "ALLOW_ALL", "catchupWindow": f"{self.catchup_s}s"},
        }


SCHEDULES = (ScheduleDef("tick-a", 600), ScheduleDef("tick-b", 600), ScheduleDef("tick-c", 3))


def pick_namespaces(partitions: int, limit: int = 8, seed: str = "tasks") -> list[str]:
    """One namespace per partition (up to ``limit``), so every partition's
    leader serves part of the workload and every leader's failure matters."""
    from hanzo_tasks.routing import partition_of

    want = min(partitions, limit)
    out: dict[int, str] = {}
    for i in range(10_000):
        name = f"chaos-{i}"
        p = partition_of("_", name, seed, partitions)
        if p not in out:
            out[p] = name
            if len(out) == want:
                break
    return [out[p] for p in sorted(out)]


@dataclass
class WorkloadConfig:
    namespaces: list[str]
    registers_per_ns: int = 2
    clients_per_node: int = 2
    think: tuple[float, float] = (0.02, 0.1)
    payload_bytes: int = 0
    #: A canary: read registers with ``?stale=true`` (any replica answers, no
    #: barrier). Under faults such reads are stale, and the checker must say so.
    stale_reads: bool = False
    weights: dict[str, int] = field(
        default_factory=lambda: {"start": 30, "signal": 15, "write": 25, "read": 30}
    )
    schedules: tuple[ScheduleDef, ...] = SCHEDULES

    def registers(self) -> list[tuple[str, str]]:
        return [(ns, f"reg-{i}") for ns in self.namespaces for i in range(self.registers_per_ns)]


@dataclass
class Target:
    """A node as the clients see it: an id and an HTTP base URL."""

    node_id: str
    url: str


class Workload:
    """Sets up the namespaces, registers and schedules, then runs the clients."""

    def __init__(self, api: Api, targets: list[Target], cfg: WorkloadConfig, history: History,
                 seed: int) -> None:
        self.api = api
        self.targets = targets
        self.cfg = cfg
        self.history = history
        self.seed = seed
        self.registers = cfg.registers()
        self.stats: dict[str, int] = {}
        self.setup_errors: list[str] = []
        self.errors: list[str] = []

    # ------------------------------------------------------------ helpers

    def _target(self, i: int) -> Target:
        return self.targets[i % len(self.targets)]

    async def _write_with_retries(
        self, op: Op, home: int, path: str, body: dict[str, Any], rnd: random.Random,
        *, deadline: float = RETRY_DEADLINE, retry_definite: frozenset[int] = frozenset({429}),
    ) -> tuple[str, Reply | None]:
        """Send until ok, a definite failure, or the deadline; same body (same requestId) each time."""
        outcomes: list[str] = []
        last: Reply | None = None
        i = home
        end = self.history.now() + deadline
        while True:
            t = self._target(i)
            t0 = self.history.now()
            rep = await self.api.post(t.url, path, body)
            last = rep
            out = rep.write_outcome()
            op.attempts.append({"node": t.node_id, "t0": round(t0, 4), "t1": round(self.history.now(), 4),
                                **rep.brief()})
            outcomes.append(out)
            if out == OK:
                return OK, rep
            retriable = out == UNKNOWN or rep.status in retry_definite or not rep.sent
            if not retriable or self.history.now() > end:
                break
            i += 1
            await asyncio.sleep(rnd.uniform(*RETRY_PAUSE))
        return (UNKNOWN if UNKNOWN in outcomes else FAILED), last

    # ------------------------------------------------------------ setup

    async def _setup_call(self, what: str, method: str, path: str, body: dict[str, Any] | None,
                          accept: Callable[[Reply], bool], timeout: float = 60.0) -> Reply | None:
        """A setup step, retried on every node until ``accept`` or ``timeout``."""
        end = self.history.now() + timeout
        i = 0
        last: Reply | None = None
        while self.history.now() < end:
            t = self._target(i)
            i += 1
            last = await self.api.call(t.url, method, path, body)
            if accept(last):
                return last
            await asyncio.sleep(0.3)
        self.setup_errors.append(f"{what}: {last.brief() if last else 'no answer'}")
        return None

    async def setup(self) -> bool:
        """Namespaces, register workflows and schedules; True when all exist."""
        def created(r: Reply) -> bool:
            return r.ok or r.code == "already_exists"

        for ns in [*self.cfg.namespaces, SCHED_NS]:
            await self._setup_call(f"namespace {ns}", "POST", NS, {"namespaceInfo": {"name": ns}}, created)
        for ns, wid in self.registers:
            op = self.history.begin(-1, "start", ns=ns, wid=wid, request_id=f"setup-{ns}-{wid}", tags=["setup"])
            body = {"workflowId": wid, "workflowType": {"name": REG_TYPE}, "taskQueue": {"name": IDLE_QUEUE},
                    "requestId": op.request_id}
            rep = await self._setup_call(f"register {ns}/{wid}", "POST", f"{NS}/{ns}/workflows", body,
                                         lambda r: r.ok)
            if rep is not None:
                op.run_id = _run_id(rep)
            self.history.end(op, OK if rep is not None else UNKNOWN)
        for s in self.cfg.schedules:
            await self._setup_call(f"schedule {s.schedule_id}", "POST", f"{NS}/{SCHED_NS}/schedules?upsert=true",
                                   s.body(), lambda r: r.ok)
        return not self.setup_errors

    # ------------------------------------------------------------ clients

    async def run(self, stop: asyncio.Event) -> None:
        """Run every client until ``stop`` is set (each finishes its current op)."""
        n = len(self.targets) * self.cfg.clients_per_node
        await asyncio.gather(*(self._client(c, stop) for c in range(n)))

    async def _client(self, c: int, stop: asyncio.Event) -> None:
        rnd = random.Random(f"{self.seed}/client/{c}")
        kinds = list(self.cfg.weights)
        weights = [self.cfg.weights[k] for k in kinds]
        home = c % len(self.targets)
        n = 0
        while not stop.is_set():
            kind = rnd.choices(kinds, weights)[0]
            n += 1
            try:
                if kind == "start":
                    await self._start(c, n, home, rnd)
                elif kind == "signal":
                    await self._signal(c, n, home, rnd)
                elif kind == "write":
                    await self._write(c, n, home, rnd)
                else:
                    await self._read(c, n, home, rnd)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a harness bug must not silently stop a client
                self.errors.append(f"client {c} {kind}: {type(e).__name__}: {e}")
                await asyncio.sleep(0.5)
            self.stats[kind] = self.stats.get(kind, 0) + 1
            try:
                await asyncio.wait_for(stop.wait(), rnd.uniform(*self.cfg.think))
            except TimeoutError:
                pass

    async def _start(self, c: int, n: int, home: int, rnd: random.Random) -> None:
        ns = rnd.choice(self.cfg.namespaces)
        inp: dict[str, Any] = {"c": c, "n": n}
        if self.cfg.payload_bytes:
            inp["pad"] = "x" * self.cfg.payload_bytes
        await self.start_workflow(c, home, rnd, ns, f"job-{c}-{n}", f"rq-{c}-{n}", inp)

    async def start_workflow(self, c: int, home: int, rnd: random.Random, ns: str, wid: str, request_id: str,
                             inp: dict[str, Any], *, wtype: str = JOB_TYPE, queue: str = QUEUE) -> Op:
        """One recorded start (retried with its requestId, see ``_write_with_retries``)."""
        op = self.history.begin(c, "start", ns=ns, wid=wid, request_id=request_id)
        body: dict[str, Any] = {"workflowId": wid, "workflowType": {"name": wtype},
                                "taskQueue": {"name": queue}, "requestId": op.request_id, "input": inp}
        outcome, rep = await self._write_with_retries(op, home, f"{NS}/{ns}/workflows", body, rnd)
        if outcome == OK and rep is not None:
            op.run_id = _run_id(rep)
        return self.history.end(op, outcome)

    async def _signal(self, c: int, n: int, home: int, rnd: random.Random) -> None:
        ns, wid = rnd.choice(self.registers)
        op = self.history.begin(c, "signal", ns=ns, wid=wid, request_id=f"sg-{c}-{n}")
        body = {"name": SIGNAL_NAME, "payload": {"c": c, "n": n}, "requestId": op.request_id}
        outcome, _ = await self._write_with_retries(op, home, f"{NS}/{ns}/workflows/{wid}/signal", body, rnd)
        self.history.end(op, outcome)

    async def _write(self, c: int, n: int, home: int, rnd: random.Random) -> None:
        ns, wid = rnd.choice(self.registers)
        await self.write_register(c, home, ns, wid, f"v-{c}-{n}")

    async def _read(self, c: int, n: int, home: int, rnd: random.Random) -> None:
        ns, wid = rnd.choice(self.registers)
        await self.read_register(c, home, ns, wid)

    async def write_register(self, c: int, target: int, ns: str, wid: str, value: str) -> Op:
        """One recorded register write of a value no other write uses, to one node, never retried."""
        op = self.history.begin(c, "write", ns=ns, wid=wid, key=f"{ns}/{wid}", value=value)
        t = self._target(target)
        rep = await self.api.post(t.url, f"{NS}/{ns}/workflows/{wid}/metadata", {"summary": value})
        op.attempts.append({"node": t.node_id, **rep.brief()})
        return self.history.end(op, rep.write_outcome())

    async def read_register(self, c: int, target: int, ns: str, wid: str) -> Op:
        """One recorded register read from one node (linearizable unless ``stale_reads``)."""
        op = self.history.begin(c, "read", ns=ns, wid=wid, key=f"{ns}/{wid}")
        t = self._target(target)
        stale = "?stale=true" if self.cfg.stale_reads else ""
        rep = await self.api.get(t.url, f"{NS}/{ns}/workflows/{wid}{stale}")
        op.attempts.append({"node": t.node_id, **rep.brief()})
        if rep.ok and isinstance(rep.body, dict):
            meta = rep.body.get("workflowExecutionInfo", {}).get("userMetadata") or {}
            op.value = meta.get("summary")
            return self.history.end(op, OK)
        return self.history.end(op, FAILED if rep.status is not None else UNKNOWN)


def _run_id(rep: Reply) -> str:
    """The runId of a start's answer ("" when the body is not the expected shape)."""
    body = rep.body if isinstance(rep.body, dict) else {}
    return str((body.get("execution") or {}).get("runId") or "")
