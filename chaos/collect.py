"""Reading the cluster's final state back, for the checks.

Runs after the heal, once the cluster is quiet (no workload, schedules
paused, workers stopped) and every replica has applied the same index: then
a ``?stale=true`` read of a node is a read of *its own replica*, which is
what "every acknowledged write is present on every node" needs, and it
proposes nothing (a linearizable read would add a barrier entry to the log
and move the replicas again).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import datetime
from typing import Any
from urllib.parse import quote

from chaos.api import Api
from chaos.checker import RunKey, ScheduleObs
from chaos.workload import SCHED_NS, SIGNAL_NAME, ScheduleDef

NS = "/v1/tasks/namespaces"


def parse_time_ms(text: str) -> int:
    """RFC 3339 with ``Z`` (SPEC §0) -> epoch milliseconds."""
    return int(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


async def list_runs(api: Api, url: str, ns: str, *, query: str | None = None,
                    stale: bool = True) -> list[dict[str, Any]] | None:
    """Every run of a namespace as one node lists it (all pages), or None."""
    out: list[dict[str, Any]] = []
    token = ""
    for _ in range(10_000):
        path = f"{NS}/{ns}/workflows?pageSize=1000"
        if stale:
            path += "&stale=true"
        if query:
            path += "&query=" + quote(query)
        if token:
            path += "&nextPageToken=" + quote(token)
        rep = await api.get(url, path, timeout=30.0)
        if not rep.ok or not isinstance(rep.body, dict):
            return None
        out.extend(rep.body.get("executions") or [])
        token = rep.body.get("nextPageToken") or ""
        if not token:
            return out
    return None


async def runs_by_node(api: Api, nodes: dict[str, str], namespaces: list[str],
                       holders: dict[str, list[str]] | None = None,
                       ) -> tuple[dict[str, dict[RunKey, list[str]]], list[str]]:
    """node -> (ns, workflowId) -> runIds, read from each node's own replica.

    ``holders`` (namespace -> nodes holding its partition; None: every node
    holds everything): a node is read only for the namespaces it holds, since
    a node without a replica would forward the read to one, and that would
    not be a read of *its* replica.
    """
    out: dict[str, dict[RunKey, list[str]]] = {}
    errors: list[str] = []
    for node, url in nodes.items():
        runs: dict[RunKey, list[str]] = {}
        complete = True
        for ns in namespaces:
            if holders is not None and node not in holders.get(ns, [node]):
                continue
            items = await list_runs(api, url, ns)
            if items is None:
                errors.append(f"{node}: could not list {ns}")
                complete = False
                break
            for it in items:
                ex = it.get("execution") or {}
                runs.setdefault((ns, ex.get("workflowId", "")), []).append(ex.get("runId", ""))
        if complete:
            out[node] = runs
    return out, errors


async def history(api: Api, url: str, ns: str, wid: str, run_id: str | None = None,
                  stale: bool = True) -> list[dict[str, Any]] | None:
    """All events of a run (every page), or None when it cannot be read."""
    events: list[dict[str, Any]] = []
    token = ""
    for _ in range(10_000):
        path = f"{NS}/{ns}/workflows/{quote(wid, safe='')}/history?pageSize=1000"
        if stale:
            path += "&stale=true"
        if run_id:
            path += f"&runId={run_id}"
        if token:
            path += "&nextPageToken=" + quote(token)
        rep = await api.get(url, path, timeout=30.0)
        if not rep.ok or not isinstance(rep.body, dict):
            return None
        events.extend(rep.body.get("events") or [])
        token = rep.body.get("nextPageToken") or ""
        if not token:
            return events
    return None


async def histories(api: Api, url: str, runs: dict[RunKey, list[str]], *, concurrency: int = 8
                    ) -> tuple[dict[RunKey, list[dict[str, Any]]], list[str]]:
    """The history of every run in ``runs`` (the latest run of each id)."""
    sem = asyncio.Semaphore(concurrency)
    out: dict[RunKey, list[dict[str, Any]]] = {}
    errors: list[str] = []

    async def one(key: RunKey) -> None:
        async with sem:
            ev = await history(api, url, key[0], key[1])
        if ev is None:
            errors.append(f"history of {key[0]}/{key[1]} unreadable")
        else:
            out[key] = ev

    await asyncio.gather(*(one(k) for k in sorted(runs)))
    return out, errors


def merged_runs(runs_by_node: dict[str, dict[RunKey, list[str]]], ref: str,
                holders: dict[str, list[str]] | None = None) -> dict[RunKey, list[str]]:
    """Every run the cluster holds, as ``ref`` reads it, and for the namespaces
    ``ref`` holds no replica of (``holders``), as their first holder read them."""
    out = dict(runs_by_node.get(ref, {}))
    if holders is None:
        return out
    for ns, nodes in holders.items():
        if ref in nodes:
            continue
        src = next((n for n in nodes if n in runs_by_node), None)
        if src is not None:
            out.update({k: v for k, v in runs_by_node[src].items() if k[0] == ns})
    return out


def signals_received(hists: dict[RunKey, list[dict[str, Any]]]) -> dict[RunKey, Counter[str]]:
    """Per run, how many SIGNALED events each requestId produced."""
    out: dict[RunKey, Counter[str]] = {}
    for key, events in hists.items():
        c: Counter[str] = Counter()
        for e in events:
            if e.get("eventType") == "WORKFLOW_EXECUTION_SIGNALED":
                a = e.get("attributes") or {}
                if a.get("signalName") == SIGNAL_NAME:
                    c[a.get("requestId") or ""] += 1
        out[key] = c
    return out


async def schedules(api: Api, url: str, defs: tuple[ScheduleDef, ...], runs: dict[RunKey, list[str]],
                    *, due_until_ms: int | None = None) -> tuple[list[ScheduleObs], list[str]]:
    """Each schedule's own account (describe) and the runs it fired (from ``runs``).

    ``due_until_ms``: slots up to this time were overdue when the harness
    quiesced the cluster (and it waited for them before pausing).
    """
    out: list[ScheduleObs] = []
    errors: list[str] = []
    for d in defs:
        rep = await api.get(url, f"{NS}/{SCHED_NS}/schedules/{d.schedule_id}?stale=true")
        if not rep.ok or not isinstance(rep.body, dict):
            errors.append(f"schedule {d.schedule_id}: {rep.brief()}")
            continue
        info = rep.body.get("info") or {}
        fired = {wid: rids for (ns, wid), rids in runs.items()
                 if ns == SCHED_NS and wid.startswith(d.schedule_id + "-")}
        out.append(ScheduleObs(
            schedule_id=d.schedule_id, catchup_s=d.catchup_s, create_ms=parse_time_ms(info["createTime"]),
            action_count=int(info.get("actionCount", 0)), missed=int(info.get("missedCatchupWindow", 0)),
            fired=fired, due_until_ms=due_until_ms,
        ))
    return out, errors
