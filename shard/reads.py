"""Read-side queries over a partition's LMDB (any read transaction).

Reads never go through ``apply``; they open an LMDB read transaction, which
is a consistent snapshot, so a page never mixes two states.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from hanzo_tasks.shard import keys
from hanzo_tasks.shard.ctx import unpack
from hanzo_tasks.shard.keys import ShardKeys
from hanzo_tasks.shard.txn import ReadTxn


def _scan(
    txn: ReadTxn, prefix: bytes, start_after: bytes | None = None, *, values: bool = True
) -> Iterator[tuple[bytes, bytes]]:
    cur = txn.cursor()
    start = prefix if start_after is None else start_after
    if not cur.set_range(start):
        return
    items = cur.iternext(keys=True, values=True) if values else ((k, b"") for k in cur.iternext(values=False))
    for k, v in items:
        if not k.startswith(prefix):
            return
        if start_after is not None and k == start_after:
            continue
        yield k, v


def page(
    txn: ReadTxn,
    prefix: bytes,
    after: bytes | None,
    limit: int,
    load: Callable[[bytes, bytes], Any | None],
) -> tuple[list[Any], bytes | None]:
    """Up to ``limit`` loaded items after key ``after``; the cursor key when more follow.

    ``load`` returns None to filter an entry out. One matching item past the
    page is looked for, so a full last page produces no extra empty page.
    """
    out: list[Any] = []
    last: bytes | None = None
    for k, v in _scan(txn, prefix, after):
        item = load(k, v)
        if item is None:
            continue
        if len(out) == limit:
            return out, last
        out.append(item)
        last = k
    return out, None


def namespace(txn: ReadTxn, org: str, ns: str) -> dict[str, Any] | None:
    raw = txn.get(ShardKeys(org, ns).namespace())
    return unpack(raw) if raw is not None else None


def namespace_names(txn: ReadTxn, org: str) -> list[str]:
    prefix = keys.registry_org_prefix(org)
    return [k[len(prefix) :].decode() for k, _ in _scan(txn, prefix, values=False)]


def run(txn: ReadTxn, org: str, ns: str, wid: str, rid: str | None) -> dict[str, Any] | None:
    k = ShardKeys(org, ns)
    if not rid:
        raw = txn.get(k.latest(wid))
        if raw is None:
            return None
        rid = unpack(raw)
    raw = txn.get(k.run(wid, rid))
    return unpack(raw) if raw is not None else None


def runs_of(txn: ReadTxn, org: str, ns: str, wid: str) -> list[dict[str, Any]]:
    """Every run of a workflow id, newest first (by start time, then apply order)."""
    k = ShardKeys(org, ns)
    runs = [unpack(v) for _, v in _scan(txn, k.runs_of(wid))]
    runs.sort(key=lambda r: r["startTime"], reverse=True)
    return runs


def list_runs(
    txn: ReadTxn,
    org: str,
    ns: str,
    match: Callable[[dict[str, Any]], bool],
    after: bytes | None,
    limit: int,
    *,
    dead: bool = False,
) -> tuple[list[dict[str, Any]], bytes | None]:
    """Runs in list order (start time desc, or close time desc for dead letters)."""
    k = ShardKeys(org, ns)
    prefix = k.dead_prefix() if dead else k.list_prefix()

    def load(key: bytes, _v: bytes) -> dict[str, Any] | None:
        wid, rid = keys.split_run_suffix(key[len(prefix) + 8 :])
        raw = txn.get(k.run(wid, rid))
        if raw is None:
            return None
        r = unpack(raw)
        return r if match(r) else None

    return page(txn, prefix, after, limit, load)


def history(
    txn: ReadTxn,
    org: str,
    ns: str,
    rid: str,
    after: int,
    reverse: bool,
    limit: int,
    length: int,
) -> tuple[list[dict[str, Any]], int | None]:
    """Events of a run: id > after ascending, or id < after descending (0 = from the end)."""
    k = ShardKeys(org, ns)
    out: list[dict[str, Any]] = []
    if reverse:
        eid = length if after <= 0 else min(after - 1, length)
        while eid >= 1 and len(out) < limit:
            raw = txn.get(k.event(rid, eid))
            if raw is not None:
                out.append(unpack(raw))
            eid -= 1
        more = eid >= 1
    else:
        eid = after + 1
        while eid <= length and len(out) < limit:
            raw = txn.get(k.event(rid, eid))
            if raw is not None:
                out.append(unpack(raw))
            eid += 1
        more = eid <= length
    return out, (out[-1]["eventId"] if more and out else None)


def schedule(txn: ReadTxn, org: str, ns: str, sid: str) -> dict[str, Any] | None:
    raw = txn.get(ShardKeys(org, ns).schedule(sid))
    return unpack(raw) if raw is not None else None


def list_schedules(
    txn: ReadTxn, org: str, ns: str, after: bytes | None, limit: int
) -> tuple[list[dict[str, Any]], bytes | None]:
    k = ShardKeys(org, ns)
    return page(txn, k.schedule_prefix(), after, limit, lambda _k, v: unpack(v))


def all_schedules(txn: ReadTxn, org: str, ns: str) -> Iterator[dict[str, Any]]:
    k = ShardKeys(org, ns)
    for _, v in _scan(txn, k.schedule_prefix()):
        yield unpack(v)


def shards(txn: ReadTxn) -> list[tuple[str, str]]:
    """Every (org, ns) registered in this partition."""
    out = []
    for k, _ in _scan(txn, keys.REGISTRY, values=False):
        org, _, ns = k[len(keys.REGISTRY) :].partition(b"\x00")
        out.append((org.decode(), ns.decode()))
    return out


def search_attrs(txn: ReadTxn, org: str, ns: str) -> dict[str, str]:
    k = ShardKeys(org, ns)
    prefix = k.attr_prefix()
    return {key[len(prefix) :].decode(): unpack(v) for key, v in _scan(txn, prefix)}


def batch(txn: ReadTxn, org: str, ns: str, batch_id: str) -> dict[str, Any] | None:
    raw = txn.get(ShardKeys(org, ns).batch(batch_id))
    return unpack(raw) if raw is not None else None


def all_batches(txn: ReadTxn, org: str, ns: str) -> list[dict[str, Any]]:
    """Every batch record of the shard (a namespace keeps few; the caller sorts)."""
    return [unpack(v) for _, v in _scan(txn, ShardKeys(org, ns).batch_prefix())]


def identity(txn: ReadTxn, org: str, ns: str, email: str) -> dict[str, Any] | None:
    """The Identity record of ``email`` (matched lower-cased), or None."""
    raw = txn.get(ShardKeys(org, ns).identity(email.lower()))
    return unpack(raw) if raw is not None else None


def identities(txn: ReadTxn, org: str, ns: str, after: str | None, limit: int) -> list[dict[str, Any]]:
    """Identities in email order after ``after`` (paging), at most ``limit``."""
    return _named_after(txn, ShardKeys(org, ns).identity_prefix(), after, limit)


def pending_tasks(
    txn: ReadTxn, org: str, ns: str, tq: str | None, now: int, limit: int
) -> list[tuple[str, str, int]]:
    """Workflow tasks visible at ``now`` (oldest first): (workflowId, runId, visibleAt).

    With ``tq`` None, every task queue of the shard (each in its own key order).
    """
    k = ShardKeys(org, ns)
    prefix = k.pending_prefix(tq)
    out: list[tuple[str, str, int]] = []
    for key, _ in _scan(txn, prefix, values=False):
        rest = key[len(k.pending_prefix()) :]
        _tq, _, tail = rest.partition(b"\x00")
        visible = int.from_bytes(tail[:8], "big")
        if tq is not None and visible > now:
            break
        if visible > now:
            continue
        wid, rid = keys.split_run_suffix(tail[8:])
        out.append((wid, rid, visible))
        if len(out) >= limit:
            break
    return out


def started_tasks(txn: ReadTxn, org: str, ns: str) -> list[tuple[str, str]]:
    k = ShardKeys(org, ns)
    prefix = k.started_prefix()
    return [keys.split_run_suffix(key[len(prefix) :]) for key, _ in _scan(txn, prefix, values=False)]


def _due(txn: ReadTxn, prefix: bytes, now: int, limit: int) -> list[tuple[int, str, str, str]]:
    """Entries of a timer index (``<at:u64> <kind> 0 <id> 0 <runId>``) due at ``now``, soonest first."""
    out: list[tuple[int, str, str, str]] = []
    for key, _ in _scan(txn, prefix, values=False):
        rest = key[len(prefix) :]
        at = int.from_bytes(rest[:8], "big")
        if at > now or len(out) >= limit:
            break
        kind, _, tail = rest[8:].partition(b"\x00")
        ident, rid = keys.split_run_suffix(tail)
        out.append((at, kind.decode(), ident, rid))
    return out


def due_deadlines(txn: ReadTxn, org: str, ns: str, now: int, limit: int) -> list[tuple[int, str, str, str]]:
    """Run timers due at ``now``: (at, kind, workflowId, runId)."""
    return _due(txn, ShardKeys(org, ns).deadline_prefix(), now, limit)


# ---- standalone activities ----------------------------------------------------


def activity(txn: ReadTxn, org: str, ns: str, aid: str, rid: str) -> dict[str, Any] | None:
    raw = txn.get(ShardKeys(org, ns).activity(aid, rid))
    return unpack(raw) if raw is not None else None


def list_activities(
    txn: ReadTxn, org: str, ns: str, after: tuple[str, str] | None, limit: int
) -> tuple[list[dict[str, Any]], tuple[str, str] | None]:
    """Activities in (activityId, runId) order after ``after``; the last (aid, rid) when more follow."""
    k = ShardKeys(org, ns)
    start = k.activity(*after) if after else None
    items, last = page(txn, k.activity_prefix(), start, limit, lambda _k, v: unpack(v))
    return items, ((items[-1]["activityId"], items[-1]["runId"]) if last is not None and items else None)


def activity_history(
    txn: ReadTxn, org: str, ns: str, rid: str, after: int, reverse: bool, limit: int, length: int
) -> tuple[list[dict[str, Any]], int | None]:
    """An activity's own events, paged like a run's history."""
    k = ShardKeys(org, ns)
    ids = range(length if after <= 0 else min(after - 1, length), 0, -1) if reverse else range(after + 1, length + 1)
    out: list[dict[str, Any]] = []
    more = False
    for eid in ids:
        if len(out) >= limit:
            more = True
            break
        raw = txn.get(k.activity_event(rid, eid))
        if raw is not None:
            out.append(unpack(raw))
    return out, (out[-1]["eventId"] if more and out else None)


def pending_activities(
    txn: ReadTxn, org: str, ns: str, tq: str, now: int, limit: int
) -> list[tuple[str, str]]:
    """Activity attempts of ``tq`` visible at ``now``, oldest first: (activityId, runId)."""
    k = ShardKeys(org, ns)
    prefix = k.activity_pending_prefix(tq)
    out: list[tuple[str, str]] = []
    for key, _ in _scan(txn, prefix, values=False):
        tail = key[len(prefix):]
        if int.from_bytes(tail[:8], "big") > now or len(out) >= limit:
            break
        out.append(keys.split_run_suffix(tail[8:]))
    return out


def due_activity_timers(
    txn: ReadTxn, org: str, ns: str, now: int, limit: int
) -> list[tuple[int, str, str, str]]:
    """Activity timers due at ``now``: (at, kind, activityId, runId)."""
    return _due(txn, ShardKeys(org, ns).activity_timer_prefix(), now, limit)


# ---- task queues (SPEC §4.5) ---------------------------------------------------

OPEN_STATUSES = frozenset(("RUNNING", "CANCELING"))


def queue_run_stats(txn: ReadTxn, org: str, ns: str) -> dict[str, list[int]]:
    """Per task queue of the shard: ``[workflows, running, latestStart (ms, 0 = none)]``.

    One pass over every run record of the namespace, so O(runs) with each record
    decoded: a run's queue is only in its record (there is no index by queue,
    and adding one would change the stored layout for an operator view). Keys
    are the stored queue names, ``""`` included; callers fold that into ``default``.
    """
    out: dict[str, list[int]] = {}
    runs = ShardKeys(org, ns).p + b"w"  # every run record: ``w <wid> 0 <rid>`` (shard/keys.py)
    for _, v in _scan(txn, runs):
        r = unpack(v)
        s = out.setdefault(r.get("taskQueue") or "", [0, 0, 0])
        s[0] += 1
        if r.get("status") in OPEN_STATUSES:
            s[1] += 1
        s[2] = max(s[2], int(r.get("startTime") or 0))
    return out


def queue_backlog(txn: ReadTxn, org: str, ns: str, tq: str | None = None) -> dict[str, list[int]]:
    """Pending tasks per task queue: ``[workflowTasks, oldestWorkflow, activityTasks, oldestActivity]``.

    Counts every pending entry, visible or still in a retry back-off; the
    oldest times are the smallest visible-at of each kind (``0`` = none). The
    index is ordered by visible-at within a queue, so the first key of a queue
    is its oldest. Keys only, no record is read: O(pending tasks). With ``tq``
    given, only that queue's key range is walked.
    """
    k = ShardKeys(org, ns)
    out: dict[str, list[int]] = {}
    for slot, base in ((0, k.pending_prefix()), (2, k.activity_pending_prefix())):
        prefix = base + (tq.encode() + b"\x00" if tq is not None else b"")
        for key, _ in _scan(txn, prefix, values=False):
            name, _, tail = key[len(base):].partition(b"\x00")
            visible = int.from_bytes(tail[:8], "big")
            s = out.setdefault(name.decode(), [0, 0, 0, 0])
            if s[slot] == 0 or visible < s[slot + 1]:
                s[slot + 1] = visible
            s[slot] += 1
    return out


def queue_runs(
    txn: ReadTxn, org: str, ns: str, tqs: frozenset[str], after: bytes | None, limit: int
) -> tuple[list[dict[str, Any]], bytes | None, int, int]:
    """The runs of the queues ``tqs`` in list order, paged, with their totals.

    Returns (page, cursor key when more follow, total runs, open runs). One pass
    over the list index (start time descending), reading every run record of
    the namespace: O(runs), because the totals need them all anyway and there
    is no index by queue.
    """
    k = ShardKeys(org, ns)
    prefix = k.list_prefix()
    items: list[dict[str, Any]] = []
    last: bytes | None = None
    more = False
    total = running = 0
    for key, _ in _scan(txn, prefix, values=False):
        wid, rid = keys.split_run_suffix(key[len(prefix) + 8 :])
        raw = txn.get(k.run(wid, rid))
        if raw is None:
            continue
        r = unpack(raw)
        if (r.get("taskQueue") or "") not in tqs:
            continue
        total += 1
        if r.get("status") in OPEN_STATUSES:
            running += 1
        if after is not None and key <= after:
            continue
        if len(items) < limit:
            items.append(r)
            last = key
        else:
            more = True
    return items, (last if more else None), total, running


# ---- nexus endpoints and deployments (SPEC §4.7) ---------------------------------------


def _named_after(
    txn: ReadTxn, prefix: bytes, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Records keyed ``prefix + name`` in name order, strictly after ``after``."""
    start = prefix + after.encode() if after is not None else None
    out: list[dict[str, Any]] = []
    for _, v in _scan(txn, prefix, start):
        if len(out) >= limit:
            break
        out.append(unpack(v))
    return out


def nexus_endpoints(
    txn: ReadTxn, org: str, ns: str, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Nexus endpoints in name order after ``after`` (paging), at most ``limit``."""
    return _named_after(txn, ShardKeys(org, ns).nexus_prefix(), after, limit)


def nexus_endpoint(txn: ReadTxn, org: str, ns: str, name: str) -> dict[str, Any] | None:
    raw = txn.get(ShardKeys(org, ns).nexus(name))
    return unpack(raw) if raw is not None else None


def deployments(
    txn: ReadTxn, org: str, ns: str, after: str | None, limit: int
) -> list[dict[str, Any]]:
    """Deployments (versions inside) in name order after ``after`` (paging), at most ``limit``."""
    return _named_after(txn, ShardKeys(org, ns).deployment_prefix(), after, limit)


def deployment(txn: ReadTxn, org: str, ns: str, name: str) -> dict[str, Any] | None:
    raw = txn.get(ShardKeys(org, ns).deployment(name))
    return unpack(raw) if raw is not None else None
