"""Placement: who leads and replicates each partition, who owns each task queue,
and which partition each shard lives in.

Everything here is built on the HRW functions of ``routing.hrw`` and is
deterministic: every node that sees the same inputs computes the same answer,
which is what lets any node route any request without asking anyone.

- ``preferred_leaders`` / ``replicas`` / ``partition_plan``: the partition layout
  the meta group publishes (SPEC §4.9 ``partitions[]``).
- ``failure_domain`` / ``spread_fill``: replicas of one partition in distinct
  failure domains (``node_zone``: a machine, rack or zone) while there are
  enough of them.
- ``Membership`` / ``MembershipWatcher``: the membership view and the single
  membership-change event that dispatch and timers subscribe to.
- ``PlacementTable``: placement pins and epochs written by migrations
  (SPEC §4.9 ``namespaces[]``: ``partition``, ``pinned``, ``placementEpoch``).

This module is a leaf: stdlib and ``routing.hrw`` only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from hanzo_tasks.routing.hrw import partition_of, rank, score, winner

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
    "partition_plan",
    "preferred_leaders",
    "replicas",
    "spread_fill",
]

log = logging.getLogger(__name__)

LEADER_SEED = "leader"
"""HRW seed of the preferred-leader ranking. Fixed rather than the cluster seed so
that leader placement does not move when an operator changes the routing seed."""


# --------------------------------------------------------------------------
# Failure domains
# --------------------------------------------------------------------------

Zones = Mapping[str, str | None]
"""node id -> its zone (``node_zone``); a node missing or mapped to None/"" has none."""


def failure_domain(node: str, zones: Zones | None) -> str:
    """The failure domain of ``node``: its zone, or the node itself when it has
    none, so that a node without a zone shares a domain with nobody (and with
    ``zones=None`` every node is its own domain: plain per-node placement)."""
    zone = zones.get(node) if zones else None
    return f"zone:{zone}" if zone else f"node:{node}"


def distinct_domains(nodes: Iterable[str], zones: Zones | None) -> int:
    """How many failure domains ``nodes`` span."""
    return len({failure_domain(n, zones) for n in nodes})


def spread_fill(chosen: Sequence[str], candidates: Iterable[str], k: int, zones: Zones | None) -> list[str]:
    """``chosen`` topped up to ``k`` nodes from ``candidates`` (in their order):
    first the candidates whose failure domain the set does not span yet, then,
    only when fewer domains than ``k`` exist, the others in order. Without
    zones this is simply the first candidates, so per-node placement is
    unchanged."""
    out = list(chosen)
    used = {failure_domain(n, zones) for n in out}
    repeats: list[str] = []
    for m in candidates:
        if len(out) >= k:
            return out
        if m in out:
            continue
        domain = failure_domain(m, zones)
        if domain in used:
            repeats.append(m)
        else:
            out.append(m)
            used.add(domain)
    return out + repeats[: max(0, k - len(out))]


# --------------------------------------------------------------------------
# Preferred leaders and replicas
# --------------------------------------------------------------------------


def _members(members: Iterable[str]) -> list[str]:
    """Sorted, de-duplicated member ids: the result must not depend on input order."""
    ms = sorted(set(members))
    if not ms:
        raise ValueError("no members")
    for m in ms:
        if not isinstance(m, str):
            raise TypeError(f"member ids are str, not {type(m).__name__}")
    return ms


def _claim(scores: Mapping[str, int], holder: str | None) -> int:
    """Sort key for shedding (smallest first): unassigned partitions, then the
    holders' weakest claims (largest HRW score). Scores are < 2**64."""
    return -(1 << 64) if holder is None else -scores[holder]


def preferred_leaders(
    partitions: int,
    members: Iterable[str],
    previous: Sequence[str | None] | None = None,
) -> list[str]:
    """The preferred leader of each partition ``0..partitions-1``.

    Balanced: with P partitions and N distinct members, every member is preferred
    for ``P // N`` or ``ceil(P / N)`` partitions, so every node leads about P/N
    partitions (ARCHITECTURE "Routing"). Deterministic and independent of the
    order (and duplicates) of ``members``.

    Algorithm (rebalance with the fewest moves, guided by HRW):

    1. Start: without ``previous``, each partition ``p`` starts at its HRW winner
       over the members for key ``("", "", str(p), LEADER_SEED)``. With
       ``previous`` (the assignment the meta group currently holds), each
       partition keeps its previous leader if that is still a member; the rest
       (leaders that left, partitions beyond ``len(previous)``) start unassigned.
    2. Quotas: ``P % N`` members get ``ceil(P/N)``, the others ``P // N``. The
       larger quotas go to the members that already hold the most partitions
       (ties by their HRW score with ``LEADER_SEED``, then id), which minimises
       the number of partitions that must move.
    3. Moves: while a partition is unassigned or held by a member above its
       quota, hand one to a member below its quota. Unassigned partitions go
       first (they must move anyway); then a member above quota gives up the
       partition it has the weakest HRW claim to (largest score). Either goes to
       the below-quota member with the best HRW score for it (ties by partition
       id, member id). Each move removes one unit of surplus, so the number of
       moves is the minimum for the quotas. Shedding weakest claims first keeps
       the result close to plain HRW, which is what keeps it stable when the
       member set changes.

    Churn: with ``previous``, adding a member moves exactly the partitions the
    newcomer takes over (``P // (N+1)`` or one more), and removing a member moves
    only the partitions it was preferred for; this is the mode the meta group
    uses. Without ``previous`` (a fresh cluster, or recomputing from scratch) the
    result is a pure function of the member set; adding a member then changes
    about ``P/(N+1)`` assignments plus a few (O(sqrt P)) rebalancing moves,
    because the HRW start is not exactly balanced.

    Raises ``ValueError`` on empty ``members`` or ``partitions < 1``.
    """
    if partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    ms = _members(members)
    n = len(ms)
    pids = [str(p) for p in range(partitions)]
    # Per partition: member -> HRW score; computed once, since the move loop
    # below compares them many times.
    scores = [{m: score("", "", pid, LEADER_SEED, m) for m in ms} for pid in pids]

    out: list[str | None] = []
    for p in range(partitions):
        if previous is None:
            out.append(min((scores[p][m], m) for m in ms)[1])
        else:
            prev = previous[p] if p < len(previous) else None
            out.append(prev if prev in scores[p] else None)

    load = dict.fromkeys(ms, 0)
    for m in out:
        if m is not None:
            load[m] += 1
    lo, extra = divmod(partitions, n)
    by_load = sorted(ms, key=lambda m: (-load[m], score("", "", "", LEADER_SEED, m), m))
    quota = {m: lo + (1 if i < extra else 0) for i, m in enumerate(by_load)}

    while True:
        over = {m for m in ms if load[m] > quota[m]}
        movable = [p for p in range(partitions) if out[p] is None or out[p] in over]
        if not movable:
            break
        under = [m for m in ms if load[m] < quota[m]]
        # Total quota == partitions, so surplus and deficit are always equal: when
        # something is movable, some member is under its quota.
        _, p, u = min(
            ((_claim(scores[p], out[p]), scores[p][u]), p, u) for p in movable for u in under
        )
        held = out[p]
        if held is not None:
            load[held] -= 1
        out[p] = u
        load[u] += 1
    return [m for m in out if m is not None]


def replicas(
    partition: int,
    members: Iterable[str],
    replication_factor: int,
    seed: str,
    *,
    leader: str | None = None,
    zones: Zones | None = None,
) -> list[str]:
    """The replica set of ``partition``: the first ``min(rf, N)`` members in HRW
    order for key ``("", "", str(partition), seed)``.

    With ``zones`` (node -> failure domain), members of a domain the set does
    not span yet go first (``spread_fill``): two replicas share a domain only
    when there are fewer domains than ``min(rf, N)``.

    The preferred leader must be a replica (Raft can only hand leadership to a
    voter of the group), so pass it as ``leader`` (``preferred_leaders(P,
    members)[partition]``, or use ``partition_plan``): it is put first and, if it
    is not among the HRW top ``rf``, it takes the place of the last of them.
    Without ``leader`` the list is plain HRW order. HRW keeps replica sets
    stable: adding a member changes a partition's set by at most one member.

    Today RF = N (every node replicates every partition); this is for the
    cluster JSON and for RF < N later.
    """
    if partition < 0:
        raise ValueError(f"partition must be >= 0, got {partition}")
    if replication_factor < 1:
        raise ValueError(f"replication_factor must be >= 1, got {replication_factor}")
    ms = _members(members)
    if leader is not None and leader not in ms:
        raise ValueError(f"leader {leader!r} is not a member")
    ranked = rank("", "", str(partition), seed, ms)
    k = min(replication_factor, len(ms))
    return spread_fill([] if leader is None else [leader], ranked, k, zones)


class PartitionPlacement(NamedTuple):
    """One entry of the partition layout (SPEC §4.9 ``partitions[]``)."""

    id: int
    preferred_leader: str
    replicas: list[str]


def partition_plan(
    partitions: int,
    members: Iterable[str],
    replication_factor: int,
    seed: str,
    previous_leaders: Sequence[str | None] | None = None,
    zones: Zones | None = None,
) -> list[PartitionPlacement]:
    """Preferred leader and replicas of every partition, computed together so that
    each preferred leader is one of its partition's replicas.

    ``previous_leaders`` is passed to ``preferred_leaders`` (minimal churn when
    the meta group recomputes the layout after a membership change);
    ``zones`` to ``replicas`` (replicas in distinct failure domains).
    """
    ms = _members(members)
    leaders = preferred_leaders(partitions, ms, previous_leaders)
    return [
        PartitionPlacement(p, lead, replicas(p, ms, replication_factor, seed, leader=lead, zones=zones))
        for p, lead in enumerate(leaders)
    ]


# --------------------------------------------------------------------------
# Membership
# --------------------------------------------------------------------------


class NoOwner(LookupError):
    """No replica of the shard's partition is alive, so no node can own the key."""


@dataclass(frozen=True, slots=True)
class Membership:
    """An immutable membership view: every consumer of one event sees the same,
    consistent ``members``/``alive`` pair and can compare views by ``epoch``.

    ``alive`` must be a subset of ``members``; both are coerced to frozensets.
    """

    members: frozenset[str]
    alive: frozenset[str]
    epoch: int = 0

    def __post_init__(self) -> None:
        members = frozenset(self.members)
        alive = frozenset(self.alive)
        if not alive <= members:
            raise ValueError(f"alive nodes that are not members: {sorted(alive - members)}")
        if self.epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {self.epoch}")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "alive", alive)

    def ranking(
        self, org: str, ns: str, tq: str, seed: str, replicas: Iterable[str] | None = None
    ) -> list[str]:
        """The alive replicas in HRW order for ``(org, ns, tq)``: the owner first,
        then the nodes that take over, in turn, if the ones before them die.

        ``replicas`` are the replicas of the shard's partition; ``None`` means all
        members (today every node replicates every partition).
        """
        cands = self.members if replicas is None else replicas
        return rank(org, ns, tq, seed, (r for r in set(cands) if r in self.alive))

    def owner(
        self, org: str, ns: str, tq: str, seed: str, replicas: Iterable[str] | None = None
    ) -> str:
        """The node that runs dispatch for ``(org, ns, tq)``: the HRW winner among
        the *alive* replicas of the shard's partition.

        Equivalent to the first alive node of the HRW ranking over all replicas,
        so when the winner dies the next-ranked replica takes over, and when it
        comes back it owns the key again. Raises ``NoOwner`` when no replica is
        alive. Costs one sha256 per replica and caches nothing, so it is always
        consistent with the view it is called on.
        """
        cands = self.members if replicas is None else replicas
        live = [r for r in cands if r in self.alive]
        if not live:
            raise NoOwner(f"no alive replica for ({org!r}, {ns!r}, {tq!r})")
        return winner(org, ns, tq, seed, live)

    def is_alive(self, node: str) -> bool:
        return node in self.alive


Subscriber = Callable[[Membership, Membership], object]
"""``fn(old, new)``, called once per membership change."""


class MembershipWatcher:
    """Holds the current ``Membership`` and publishes the one membership-change
    event that dispatch and timers subscribe to (ARCHITECTURE "Routing").

    - ``update`` bumps the epoch only on a real change, so subscribers never
      re-target on noise (a heartbeat that reports the same alive set).
    - Each change is delivered once to every subscriber, as ``fn(old, new)``,
      in epoch order, never concurrently: a subscriber can trust that
      ``old`` is the view it last saw.
    - Subscribers run outside the state lock (they may read ``current`` or call
      ``update``), on the thread that made the change; ``update`` returns after
      its own event was delivered. A nested ``update`` from inside a subscriber is
      delivered right after the current event has reached every subscriber.
    - A subscriber that raises is logged and skipped; the others still get the
      event (one broken consumer must not blind dispatch or timers).
    """

    def __init__(self, initial: Membership | None = None) -> None:
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._current = initial if initial is not None else Membership(frozenset(), frozenset())
        self._subs: dict[int, Subscriber] = {}
        self._next_token = 0
        self._pending: list[tuple[Membership, Membership]] = []
        self._delivered = self._current.epoch
        self._deliverer: int | None = None  # thread ident of the draining thread

    @property
    def current(self) -> Membership:
        return self._current

    @property
    def epoch(self) -> int:
        return self._current.epoch

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Register ``fn(old, new)``; returns an idempotent unsubscribe callable.

        An event already being delivered when ``unsubscribe`` is called may still
        reach ``fn`` once.
        """
        with self._lock:
            token = self._next_token
            self._next_token += 1
            self._subs[token] = fn

        def unsubscribe() -> None:
            with self._lock:
                self._subs.pop(token, None)

        return unsubscribe

    def update(
        self, members: Iterable[str] | None = None, alive: Iterable[str] | None = None
    ) -> Membership:
        """Replace the member and/or alive sets; ``None`` keeps the current one.

        When only ``members`` is given, ``alive`` becomes the current alive set
        minus the nodes that left (a node that joins is not alive until the
        failure detector says so). Returns the resulting view; its epoch is one
        more than before if anything changed, else the view is unchanged.
        Raises ``ValueError`` (and changes nothing) if ``alive`` is not a subset
        of ``members``.
        """
        me = threading.get_ident()
        with self._lock:
            old = self._current
            new_members = old.members if members is None else frozenset(members)
            new_alive = old.alive & new_members if alive is None else frozenset(alive)
            if new_members == old.members and new_alive == old.alive:
                return old
            new = Membership(new_members, new_alive, old.epoch + 1)
            self._current = new
            self._pending.append((old, new))
            while True:
                if self._delivered >= new.epoch:
                    return new
                if self._deliverer is None:
                    self._deliverer = me
                    break
                if self._deliverer == me:
                    return new  # nested update from a subscriber: queued behind us
                self._cond.wait()
        self._drain()
        return new

    def _drain(self) -> None:
        """Deliver queued events in order until none is left (caller is the
        deliverer). Always gives up the deliverer role, even on BaseException,
        so that a waiting ``update`` can take over instead of hanging."""
        try:
            while True:
                with self._lock:
                    if not self._pending:
                        return
                    old, new = self._pending.pop(0)
                    subs = list(self._subs.values())
                for fn in subs:
                    try:
                        fn(old, new)
                    except Exception:
                        log.exception("membership subscriber %r failed (epoch %d)", fn, new.epoch)
                with self._lock:
                    self._delivered = new.epoch
                    self._cond.notify_all()
        finally:
            with self._lock:
                self._deliverer = None
                self._cond.notify_all()


# --------------------------------------------------------------------------
# Placement pins and epochs
# --------------------------------------------------------------------------


class Pin(NamedTuple):
    """A shard pinned to ``partition`` by the flip of migration ``epoch``."""

    partition: int
    epoch: int


class Placement(NamedTuple):
    """Where a shard lives right now, read in one step so that partition and
    epoch always belong together (commands carry the epoch; a write stamped with
    an older one is rejected at the old partition and retried)."""

    partition: int
    epoch: int
    pinned: bool


class PlacementTable:
    """Placement pins: ``(org, ns) -> (partition, epoch)``.

    A shard lives in its HRW partition (``partition_of``) until a migration
    flips it elsewhere; the flip is a ``pin`` with a new, strictly larger
    placement epoch. Epochs never go backwards, so a stale write can always be
    recognised. In memory only: the meta group owns persistence and feeds the
    table through ``pin`` (or the constructor, when it restores a snapshot).
    Thread-safe: pins are replaced atomically and reads take one dict lookup.
    """

    def __init__(self, pins: Mapping[tuple[str, str], tuple[int, int]] | None = None) -> None:
        self._lock = threading.Lock()
        self._pins: dict[tuple[str, str], Pin] = {}
        for (org, ns), (partition, epoch) in (pins or {}).items():
            if partition < 0 or epoch < 1:
                raise ValueError(f"bad pin for ({org!r}, {ns!r}): ({partition}, {epoch})")
            self._pins[(org, ns)] = Pin(partition, epoch)

    def placement(self, org: str, ns: str, seed: str, partitions: int) -> Placement:
        """Partition, epoch and pinned flag of a shard, consistently."""
        pin = self._pins.get((org, ns))
        if pin is not None:
            return Placement(pin.partition, pin.epoch, True)
        return Placement(partition_of(org, ns, seed, partitions), 0, False)

    def partition(self, org: str, ns: str, seed: str, partitions: int) -> int:
        """The pinned partition if any, else the HRW partition.

        A pin wins even if it is >= ``partitions``: the meta group is
        authoritative, and the partition count only ever grows.
        """
        pin = self._pins.get((org, ns))
        return pin.partition if pin is not None else partition_of(org, ns, seed, partitions)

    def epoch(self, org: str, ns: str) -> int:
        """The shard's placement epoch; 0 while it has never been pinned."""
        pin = self._pins.get((org, ns))
        return pin.epoch if pin is not None else 0

    def pinned(self, org: str, ns: str) -> bool:
        return (org, ns) in self._pins

    def pin(self, org: str, ns: str, partition: int) -> int:
        """Pin the shard to ``partition`` and return its new epoch (previous + 1).

        Every pin is a flip and gets a new epoch, even to the same partition:
        the epoch fences writes stamped before the flip.
        """
        if partition < 0:
            raise ValueError(f"partition must be >= 0, got {partition}")
        with self._lock:
            old = self._pins.get((org, ns))
            epoch = (old.epoch if old is not None else 0) + 1
            self._pins[(org, ns)] = Pin(partition, epoch)
            return epoch

    def pins(self) -> dict[tuple[str, str], Pin]:
        """A snapshot copy of all pins (for the cluster JSON and meta snapshots)."""
        with self._lock:
            return dict(self._pins)

    def __len__(self) -> int:
        return len(self._pins)
