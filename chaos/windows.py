"""Raft windows a scenario aims at, seen from outside a node: pure functions.

The scenarios that reach the replication layer's narrow windows (issue 23:
a follower held behind while the leader compacts past it, a kill while a
node compacts or installs a snapshot, a full journal, a membership change
around a dead replica, reads while a namespace flips) need to know *when* a
node is inside such a window, and to say afterwards whether they got there.
They look at what a node leaves on disk and says in ``/metrics``, never
inside the process. Everything here is a pure function of file names, file
bytes, metric text or timelines (no I/O), so it is unit-tested in
``tests/chaos/test_windows.py``; ``chaos.scenarios`` does the polling.

What a node's files say (``<data-dir>/raft/`` unless noted; ``<g>`` is a
group: a partition number or ``meta``)::

    <g>.snapshot.work        our snapshotter writes a new image (serializing)
    <g>.snapshot             the image in place; its inode changes when a new
                             one is renamed over it (compaction's swap)
    <g>.journal.compact      the journal keeps only the entries past the new
                             image (the log prefix is being dropped)
    <g>.snapshot.recv        a follower receives a leader's image (install)
    partitions/.verify-*     a received image is opened as LMDB before it is used
    partitions/.restore-*    a received image replaces the partition's LMDB

Those names come from ``replication/raft/snapshots.py`` and ``journal.py``;
``PHASES`` is the one table to change if they move.
A scenario that never sees its window says so in its notes: that is not an
anomaly, only a run that proved less.
"""

from __future__ import annotations

import fnmatch
import random
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

#: Phase -> file-name patterns that show it (in ``<data-dir>/raft/``).
PHASES: dict[str, tuple[str, ...]] = {
    "serializing": ("*.snapshot.work",),
    "dropping-prefix": ("*.journal.compact",),
    "receiving": ("*.snapshot.recv",),
}
#: Phase -> patterns in ``<data-dir>/partitions/`` (a restore's scratch directory).
PARTITION_PHASES: dict[str, tuple[str, ...]] = {
    "receiving": (".verify-*",),
    "restoring": (".restore-*",),
}
COMPACTION_PHASES = ("serializing", "dropping-prefix", "swapped")
INSTALL_PHASES = ("receiving", "restoring")

_GROUP = re.compile(r"^(meta|\d+)\.")


def group_of(name: str) -> str | None:
    """The group a raft file belongs to (``"3"``, ``"meta"``), or None."""
    m = _GROUP.match(name)
    return m.group(1) if m else None


def phase_files(raft_names: Iterable[str], partition_names: Iterable[str] = ()) -> dict[str, list[tuple[str, str]]]:
    """Phase -> (group, file name) of every file showing it, from directory listings.

    ``raft_names``: the names in ``<data-dir>/raft/``; ``partition_names``:
    those in ``<data-dir>/partitions/``. A restore's scratch directory names
    no group: its group is its own name.
    """
    out: dict[str, list[tuple[str, str]]] = {}
    for name in sorted(raft_names):
        for phase, pats in PHASES.items():
            if any(fnmatch.fnmatchcase(name, p) for p in pats):
                out.setdefault(phase, []).append((group_of(name) or name, name))
    for name in sorted(partition_names):
        for phase, pats in PARTITION_PHASES.items():
            if any(fnmatch.fnmatchcase(name, p) for p in pats):
                out.setdefault(phase, []).append((name, name))
    return out


def phases_in(raft_names: Iterable[str], partition_names: Iterable[str] = ()) -> dict[str, list[str]]:
    """Phase -> the groups (or scratch names) showing it (``phase_files`` without the file names)."""
    return {ph: [g for g, _ in items] for ph, items in phase_files(raft_names, partition_names).items()}


def swapped_images(before: dict[str, tuple[int, int]], now: dict[str, tuple[int, int]]) -> list[str]:
    """Groups whose ``<g>.snapshot`` was replaced since ``before`` (name -> (inode, mtime_ns)).

    A new file where there was none counts too: a group's first image.
    """
    out = []
    for name, ident in sorted(now.items()):
        if name.endswith(".snapshot") and before.get(name) != ident:
            out.append(group_of(name) or name)
    return out


# --------------------------------------------------------------------------- files after a kill

SNAP_MAGIC = b"HZTSNAP1"
JOURNAL_HEADER = 16
_U32 = struct.Struct(">I")
_REC = struct.Struct("<IIQQ")  # crc, length, idx, term


def snapshot_entries(head: bytes) -> list[int] | None:
    """The log indexes recorded in an image's header (``[last, prev]``), or None.

    ``head``: the first bytes of ``<g>.snapshot`` (64 KiB is plenty):
    ``MAGIC | u32 header length | msgpack header``.
    """
    import msgpack

    if not head.startswith(SNAP_MAGIC) or len(head) < len(SNAP_MAGIC) + _U32.size:
        return None
    (n,) = _U32.unpack_from(head, len(SNAP_MAGIC))
    start = len(SNAP_MAGIC) + _U32.size
    if len(head) < start + n:
        return None
    try:
        header = msgpack.unpackb(head[start:start + n], raw=False)
        return [int(e[1]) for e in header["entries"]]
    except Exception:
        return None


def journal_first_index(head: bytes) -> int | None:
    """The index of the journal's first record, or None (empty or not our format).

    ``head``: the first bytes of ``<g>.journal``: a 16-byte header, then
    records ``u32 crc | u32 length | u64 idx | u64 term | command``.
    """
    if len(head) < JOURNAL_HEADER + _REC.size:
        return None
    _, _, idx, _ = _REC.unpack_from(head, JOURNAL_HEADER)
    return int(idx)


def compaction_state(image_entries: list[int] | None, journal_first: int | None) -> str:
    """Where a node killed mid-compaction stopped, from its files.

    pysyncobj keeps, after compaction, a journal that starts with the two
    entries the image records (``prev``, ``last``). ``journal-prefix-kept``:
    the new image is in place but the journal still starts before it (the
    kill fell between the image's swap and the prefix drop, issue 23 defect
    1: on restart pysyncobj sees ``journal[0]`` differ from the image and
    clears the journal). ``consistent``: the journal starts at the image's
    entries. ``unknown``: the files could not be read.
    """
    if not image_entries or journal_first is None:
        return "unknown"
    prev = min(image_entries)
    if journal_first < prev:
        return "journal-prefix-kept"
    return "consistent"


# --------------------------------------------------------------------------- metrics

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def metric_value(text: str, name: str, **labels: str) -> float | None:
    """The sum of the samples of ``name`` whose labels include ``labels`` (None: no sample).

    ``text`` is Prometheus' text exposition (``GET /metrics``); a counter
    registered as ``x`` is exposed as ``x_total``, and either name matches.
    """
    total: float | None = None
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None or m.group(1) not in (name, name + "_total"):
            continue
        got = dict(_LABEL.findall(m.group(2) or ""))
        if any(got.get(k) != v for k, v in labels.items()):
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        total = value if total is None else total + value
    return total


# --------------------------------------------------------------------------- choices


def fewest_led(holding: dict[str, list[int]], leaders: dict[int, str], rnd: random.Random) -> str | None:
    """A node to hold behind: among those holding the most partitions, one leading the fewest
    (so it is a follower of most of what it holds). ``holding``: node -> its partitions."""
    if not holding:
        return None
    most = max(len(ps) for ps in holding.values())
    pool = sorted(n for n, ps in holding.items() if len(ps) == most and ps)
    if not pool:
        return None
    led = {n: sum(1 for p in holding[n] if leaders.get(p) == n) for n in pool}
    low = min(led.values())
    return rnd.choice([n for n in pool if led[n] == low])


def followed(partitions: Sequence[int], node: str, leaders: dict[int, str]) -> list[int]:
    """The partitions among ``partitions`` that ``node`` does not lead (all of them when it leads every one)."""
    out = [p for p in partitions if leaders.get(p) != node]
    return out or list(partitions)


def namespaces_in(partitions: Iterable[int], placement: dict[str, int], namespaces: Iterable[str]) -> list[str]:
    """The namespaces among ``namespaces`` that live in ``partitions`` now (``placement``: ns -> partition)."""
    want = set(partitions)
    return [ns for ns in namespaces if placement.get(ns) in want]


# --------------------------------------------------------------------------- the mixed run's episodes


def pick_episode(pending: list[str], time_left: float, durations: dict[str, float], rnd: random.Random,
                 chance: float = 0.4) -> str | None:
    """Whether the next step of ``mixed`` is a window episode, and which.

    Every episode is run once before any repeats (``pending``, in the run's
    seeded order; the pick is removed from it): one is due when ``rnd``
    says so, or when the time left would not hold the pending ones any more.
    After that, one is chosen now and then (``chance / 2``). None: a plain
    fault. An episode that needs more time than is left is never chosen.
    """
    fits = [n for n in pending if durations.get(n, 0.0) <= time_left]
    if fits:
        need = sum(durations.get(n, 0.0) for n in pending)
        if rnd.random() < chance or need >= time_left * 0.8:
            pending.remove(fits[0])
            return fits[0]
        return None
    if pending:
        return None
    others = [n for n, d in sorted(durations.items()) if d <= time_left]
    if others and rnd.random() < chance / 2:
        return rnd.choice(others)
    return None


@dataclass
class Excuse:
    """A node may exit on its own here (e.g. a watchdog stopping a node whose journal is full)."""

    node: str
    start: float
    end: float | None
    why: str


def excused(node: str, t: float, excuses: Iterable[Excuse], slack: float = 15.0) -> Excuse | None:
    """The excuse covering an exit of ``node`` noticed at ``t`` (history time), if any.

    Exits are noticed late (the monitor looks once a second; a node is
    reaped when the harness next touches it), hence ``slack`` after the end.
    """
    for e in excuses:
        if e.node == node and e.start <= t and (e.end is None or t <= e.end + slack):
            return e
    return None


def tally(episodes: Iterable[dict[str, Any]], names: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per window scenario: how often it ran, reached its window, or was skipped (a node was down before it).

    Every name is listed, run or not, so that a report says plainly which
    windows a long run did not reach.
    """
    out = {n: {"ran": 0, "reached": 0, "skipped": 0} for n in names}
    for e in episodes:
        t = out.setdefault(e.get("scenario", "?"), {"ran": 0, "reached": 0, "skipped": 0})
        if e.get("skipped"):
            t["skipped"] += 1
            continue
        t["ran"] += 1
        if e.get("reached"):
            t["reached"] += 1
    return out


# --------------------------------------------------------------------------- leaders over time


def leaderless_stretches(samples: Iterable[tuple[float, dict[int, str | None]]], partitions: Iterable[int],
                         end: float | None = None) -> dict[int, float]:
    """Per partition, the longest time without a leader in a series of samples.

    ``samples``: (time, partition -> leader or None), in time order; a
    stretch runs from the first sample without a leader to the next sample
    with one (or ``end``, else the last sample).
    """
    parts = list(partitions)
    longest = dict.fromkeys(parts, 0.0)
    since: dict[int, float | None] = dict.fromkeys(parts)
    last_t: float | None = None
    for t, leaders in samples:
        last_t = t
        for p in parts:
            if leaders.get(p):
                if since[p] is not None:
                    longest[p] = max(longest[p], t - since[p])  # type: ignore[operator]
                    since[p] = None
            elif since[p] is None:
                since[p] = t
    stop = end if end is not None else last_t
    if stop is not None:
        for p in parts:
            if since[p] is not None:
                longest[p] = max(longest[p], stop - since[p])  # type: ignore[operator]
    return {p: round(v, 2) for p, v in longest.items()}


def balanced(replicas: dict[int, Sequence[str]], members: Iterable[str], replication_factor: int) -> bool:
    """Every set holds ``min(R, members)`` members, and every member holds within one of every other."""
    ms = sorted(set(members))
    if not ms:
        return False
    k = min(replication_factor, len(ms))
    if any(len(set(rs)) != k or not set(rs) <= set(ms) for rs in replicas.values()):
        return False
    load = [sum(1 for rs in replicas.values() if m in rs) for m in ms]
    return max(load) - min(load) <= 1
