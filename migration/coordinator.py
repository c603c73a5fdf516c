"""The migration coordinator: snapshot + tail + fenced cutover (ARCHITECTURE.md "Migration").

Jobs are records in the meta group; the **meta leader** runs them, and a job
survives its coordinator. A coordinator first *claims* the job (``mig.claim``
raises the job's claim number in the meta group) and every step it takes
carries that number: the meta group and the partitions refuse steps with an
older one (shard.moving), so a deposed leader that has not noticed yet cannot
act on a job its successor took over (two copies of one job would otherwise
mix their snapshots in the destination):

1. ``snapshotting`` — the destination partition is told to expect the shard
   (``mig.incoming``), the source starts recording the shard's tail
   (``mig.begin``), then one LMDB read transaction of a source replica that is
   caught up (a barrier) yields the range and the tail position it contains.
   The range goes to the destination leader as numbered, checksummed
   ``mig.chunk`` proposals (so every destination replica installs the same
   bytes), paced by a bandwidth limit.
2. ``catching-up`` — tail entries after that position are forwarded in order
   (``mig.tail``, re-applied with their source log index) until little is left.
3. ``cutover`` — ``mig.fence`` on the source; the rest of the tail is
   forwarded; both copies are hashed and must be equal; the pin
   ``(org, ns) -> destination`` is committed in the meta group with a new
   placement epoch (the flip); the destination is activated. Writes that hit
   the fence wait in the proposer and follow the pin.
4. ``done`` — the source range is garbage-collected.

Any failure before the flip aborts (``mig.unfence`` on the source, ``mig.drop``
on the destination) and the job ends ``failed``; after the flip the job can
only go forward. A new meta leader claims every unfinished job and finishes
flipped ones, runs pending ones (nobody took a step of them: a step comes only
after the claimant recorded ``snapshotting``) and aborts the others, so every
job ends ``done`` or ``failed`` and re-running one is always possible. The
source range is collected only after both copies were compared equal.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import msgpack
from hanzo_tasks.migration.remote import MigrationError, PartitionReads, SnapshotYielded, hash_range
from hanzo_tasks.replication import NodeReplicator, Replicator
from hanzo_tasks.shard import encode, moving, reads

log = logging.getLogger("tasks.migration")

Json = dict[str, Any]

CHUNKS_IN_FLIGHT = 4
SNAPSHOT_ATTEMPTS = 6  # copies started afresh after giving way to a map growth
TAIL_BATCH = 256
CATCH_UP_LAG = 64
"""Tail entries left over when the fence goes up (they are forwarded while fenced)."""
STEP_RETRY_FOR = 30.0
LEFTOVER_RETRY = 2.0
LEFTOVER_PATIENCE = 120.0
COMPARE_RETRY_FOR = 120.0
"""How long the digests of the two copies are asked for before the job ends uncompared."""


class Superseded(MigrationError):
    """Another coordinator claimed the job since: this one stops touching it (no abort, no finish)."""


def _superseded(res: Json) -> bool:
    return bool((res.get("details") or {}).get("superseded"))


class Migrations:
    """Creates, runs, recovers and reports migration jobs on one node."""

    def __init__(
        self,
        replicator: NodeReplicator,
        *,
        node_id: str,
        clock: Callable[[], int],
        max_fence_ms: int = 5000,
        bandwidth: int = 64 << 20,
        on_change: Callable[[Json], None] | None = None,
    ) -> None:
        self.rep = replicator
        self.node_id = node_id
        self.clock = clock
        self.max_fence_ms = max_fence_ms
        self.bandwidth = bandwidth
        self.on_change = on_change
        self._running: dict[str, asyncio.Task] = {}
        self._local_jobs: dict[str, Json] = {}  # local mode: no meta group
        self._claims: dict[str, int] = {}  # job id -> the claim this coordinator holds on it
        # The meta group's term in which this node last became its leader (None:
        # never). Every claim carries it, and the meta group refuses a claim of
        # an older term than one it recorded for the job: a coordinator resumed
        # after a pause, whose loop has not yet heard that it lost the lead, can
        # then no longer take a job from the leader that replaced it.
        self._lead_term: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.fenced_ms: list[int] = []
        self.reads = PartitionReads(replicator, self._barrier_step)

    async def _barrier_step(self, group: int, org: str, ns: str, op: str) -> Json:
        return await self._shard(group, org, ns, op)

    @property
    def clustered(self) -> bool:
        return self.rep.clustered

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if not self.clustered:
            return
        self.rep.subscribe(self._on_apply)
        self.rep.on_leadership(self._on_leadership)
        if self.rep.is_leader(self.rep.meta_group):
            self._note_lead_term()
        if self.on_change is not None:
            for job in self.rep.meta.jobs():
                self.on_change(job)
        if self.rep.is_leader(self.rep.meta_group):
            self._recover()

    async def stop(self) -> None:
        tasks = list(self._running.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ---- records -----------------------------------------------------------------

    def jobs(self) -> list[Json]:
        if not self.clustered:
            return sorted(self._local_jobs.values(), key=lambda j: (j["startedAt"], j["id"]))
        return sorted(self.rep.meta.jobs(), key=lambda j: (j["startedAt"], j["id"]))

    def job(self, job_id: str) -> Json | None:
        if not self.clustered:
            return self._local_jobs.get(job_id)
        return self.rep.meta.job(job_id)

    async def create(self, org: str, ns: str, from_partition: int, to_partition: int,
                     leaders: dict[int, str | None] | None = None) -> Json:
        """Record a job; the meta leader picks it up. Returns the record as created.
        ``leaders``: the leaders of partitions this node does not hold, as their replicas see them."""
        now = self.clock()
        known = leaders or {}
        job: Json = {
            "id": secrets.token_hex(8), "org": org, "namespace": ns,
            "from": self.rep.leader(from_partition) or known.get(from_partition),
            "to": self.rep.leader(to_partition) or known.get(to_partition),
            "fromPartition": from_partition, "toPartition": to_partition, "placementEpoch": None,
            "status": "pending", "snapshotIndex": None, "tailEntries": 0, "bytes": 0, "fencedMs": 0,
            "startedAt": now, "finishedAt": None, "error": None,
        }
        if from_partition == to_partition:  # already home: nothing to copy or fence
            job.update(status="done", finishedAt=now)
        if not self.clustered:
            self._local_jobs[job["id"]] = job
            return job
        res = await self._meta({"op": "mig.job", "job": job})
        return res["job"]

    # ---- who runs what ----------------------------------------------------------------

    def _on_apply(self, group: int, index: int, result: Json) -> None:
        if group != self.rep.meta_group or "migration" not in result:
            return
        job = result.get("job")
        if job and self.on_change is not None:
            self.on_change(job)
        if not result.get("created"):
            return
        if job is None:  # the meta shard always returns the job it created
            raise TypeError("a created migration's result carries no job")
        if job["status"] == "pending" and self.rep.is_leader(self.rep.meta_group):
            self._spawn(job["id"], self._run(job))

    def _on_leadership(self, group: int, leading: bool) -> None:
        if group != self.rep.meta_group:
            return
        if leading:
            self._note_lead_term()
            self._spawn("recover", self._recover_after_barrier())
        else:
            # No longer the coordinator: stop driving jobs. The new meta leader
            # finishes or aborts them; every step is idempotent, and an abort is
            # recorded in the meta group before anything is undone, so a step of
            # ours still in flight cannot flip a job that is being aborted.
            for t in list(self._running.values()):
                t.cancel()

    def _note_lead_term(self) -> None:
        term = self.rep.group_status(self.rep.meta_group).get("term")
        if isinstance(term, int):
            self._lead_term = term

    async def _recover_after_barrier(self) -> None:
        """See every committed job update before deciding what to do with the jobs."""
        try:
            await self._meta({"op": "sys.barrier"})
        except MigrationError as e:
            log.warning("migration recovery postponed: %s", e)
            return
        if self.rep.is_leader(self.rep.meta_group):
            self._recover()

    def _recover(self) -> None:
        """A new coordinator: take every unfinished job over (``_run`` claims it and
        finishes, runs or aborts it), and clear move states that a failed job's
        late steps left in partitions."""
        jobs = {j["id"]: j for j in self.rep.meta.jobs()}
        self._spawn("clean-leftovers", self._clean_leftovers())
        for job in jobs.values():
            if job["status"] in ("done", "failed") or job["id"] in self._running:
                continue
            self._spawn(job["id"], self._run(job))

    async def _clean_leftovers(self) -> None:
        """Every partition is checked: one that cannot be read yet (a new
        coordinator often starts before its peers applied the replica layout)
        is tried again, every ``LEFTOVER_RETRY`` s for ``LEFTOVER_PATIENCE`` s,
        so that a fence a failed job left behind is never forgotten."""
        pending = list(range(self.rep.partitions))
        deadline = time.monotonic() + LEFTOVER_PATIENCE
        while pending:
            retry = []
            for p in pending:
                try:
                    states = await self.reads.states(p)
                except MigrationError as e:
                    retry.append(p)
                    if time.monotonic() >= deadline:
                        log.warning("move states of partition %d not checked: %s", p, e)
                    continue
                # The jobs as of now, read after the states: a job that began
                # meanwhile is known (its record precedes its move states), not a leftover.
                self._clean_states(p, {j["id"]: j for j in self.rep.meta.jobs()}, states)
            if not retry or time.monotonic() >= deadline or not self.rep.is_leader(self.rep.meta_group):
                return
            pending = retry
            await asyncio.sleep(LEFTOVER_RETRY)

    def _clean_states(self, p: int, jobs: dict[str, Json], states: Any) -> None:
        for org, ns, st in states:
            job = jobs.get(st.get("job"))
            if st["role"] in ("src", "dst") and (job is None or job["status"] == "failed"):
                op = "mig.unfence" if st["role"] == "src" else "mig.drop"
                self._spawn(f"clean-{p}-{org}-{ns}", self._clean(p, org, ns, op, st["job"]))

    def _spawn(self, job_id: str, coro: Any) -> None:
        if job_id in self._running:
            coro.close()
            return
        t = asyncio.get_running_loop().create_task(coro, name=f"migration-{job_id}")
        self._running[job_id] = t

        def done(task: asyncio.Task) -> None:
            if self._running.get(job_id) is task:
                del self._running[job_id]
            if not task.cancelled() and task.exception() is not None:
                log.error("migration task %s failed", job_id, exc_info=task.exception())

        t.add_done_callback(done)

    # ---- the protocol -------------------------------------------------------------------

    async def _run(self, job: Json) -> None:
        """Claim the job, then drive it from where its record (as claimed) says it is:
        a flipped job is finished, a pending one run, any other aborted (its
        coordinator is gone: a copy half made by another cannot be continued)."""
        jid = job["id"]
        try:
            job = await self._claim(job)
        except (MigrationError, Superseded) as e:  # Superseded: a leader of a later term has it
            log.info("migration %s not taken over: %s", jid, e)
            return
        try:
            if job.get("flipped"):
                await self._finish(job)
            elif job["status"] == "pending" and not job.get("aborting"):
                await self._drive(job)
            else:
                await self._abort(job, "the coordinator changed before the cutover")
        except Superseded as e:
            log.info("migration %s: another coordinator took it over (%s); leaving it", jid, e)
        finally:
            self._claims.pop(jid, None)

    async def _claim(self, job: Json) -> Json:
        """Claim ``job`` in the meta group: returns its record as of the claim."""
        jid = job["id"]
        cmd: Json = {"op": "mig.claim", "id": jid, "owner": self.node_id, "token": secrets.token_hex(8)}
        if self._lead_term is not None:
            cmd["term"] = self._lead_term
        res = await self._meta(cmd)
        self._claims[jid] = int(res["claim"])
        return res["job"]

    async def _drive(self, job: Json) -> None:
        try:
            await self._copy(job)
        except (asyncio.CancelledError, Superseded):
            raise
        except Exception as e:  # noqa: BLE001 - every failure before the flip aborts the job
            if (self.rep.meta.job(job["id"]) or {}).get("flipped"):
                log.exception("migration %s failed after its flip; finishing", job["id"])
                await self._finish(job)
                return
            log.warning("migration %s of %s aborted: %s", job["id"], job["namespace"], e)
            await self._abort(job, str(e) or type(e).__name__)

    async def _copy(self, job: Json) -> None:
        org, ns, src, dst, jid = job["org"], job["namespace"], job["fromPartition"], job["toPartition"], job["id"]
        await self._update(jid, status="snapshotting")
        await self._shard(dst, org, ns, "mig.incoming", job=jid)
        await self._shard(src, org, ns, "mig.begin", job=jid)
        await self._shard(src, org, ns, "sys.barrier")  # the local replica now has the begin
        forwarded, sent = await self._snapshot_with_restarts(src, dst, org, ns, jid)
        await self._update(jid, status="catching-up", bytes=sent)
        tail = 0
        while True:  # forward until the lag is small
            entries = await self._tail(src, org, ns, forwarded)
            if entries:
                forwarded = await self._forward(dst, org, ns, jid, entries)
                tail += len(entries)
                await self._update(jid, tailEntries=tail)
            if len(entries) < CATCH_UP_LAG:
                break
        await self._update(jid, status="cutover")
        fenced_at = time.monotonic()
        res = await self._shard(src, org, ns, "mig.fence", job=jid)
        last = res["seq"]
        while forwarded < last:
            entries = await self._tail(src, org, ns, forwarded)
            if not entries:
                await asyncio.sleep(0.005)  # the local replica is applying the fence's predecessors
                if (time.monotonic() - fenced_at) * 1000 > self.max_fence_ms:
                    raise MigrationError("the source's tail did not arrive within migration.max_fence")
                continue
            entries = [e for e in entries if e[0] <= last]
            forwarded = await self._forward(dst, org, ns, jid, entries)
            tail += len(entries)
        arrived = await self.reads.state(dst, org, ns)  # after a barrier where it is read
        if arrived is None or arrived.get("job") != jid or arrived.get("seq") != last:
            raise MigrationError(f"the destination holds tail entry {(arrived or {}).get('seq')}, not {last}")
        # Both copies are compared byte for byte, but off the fenced path: the
        # read views are opened now (the source is fenced, the destination not
        # yet active, so neither changes) and hashed while writes resume.
        src_digest = await self.reads.open_hash(src, org, ns)
        dst_digest = await self.reads.open_hash(dst, org, ns)
        fenced_ms = int((time.monotonic() - fenced_at) * 1000)
        if fenced_ms > self.max_fence_ms:
            raise MigrationError(f"the fence lasted {fenced_ms} ms, over migration.max_fence")
        await self._meta({"op": "mig.pin", "id": jid, "claim": self._claims.get(jid), "tailEntries": tail,
                          "bytes": sent})
        await self._shard(dst, org, ns, "mig.activate", job=jid)
        fenced_ms = int((time.monotonic() - fenced_at) * 1000)
        self.fenced_ms.append(fenced_ms)
        await self._update(jid, fencedMs=fenced_ms)
        same, why = await self._compare(jid, src_digest, dst_digest)
        await self._conclude(job, same, why)

    async def _compare(self, jid: str, src_digest: Callable[[], Any],
                       dst_digest: Callable[[], Any]) -> tuple[bool | None, str]:
        """Compare the two copies' digests: (equal?, why not compared). A digest that
        cannot be fetched (its replica unreachable, slow or restarted) is asked for
        again, for ``COMPARE_RETRY_FOR`` s; then the answer is None: not compared,
        which is never taken for equal (the source would be collected on it)."""
        deadline = time.monotonic() + COMPARE_RETRY_FOR
        delay = 0.05
        while True:
            try:
                return await src_digest() == await dst_digest(), ""
            except MigrationError as e:
                if time.monotonic() >= deadline:
                    return None, str(e) or type(e).__name__
                log.warning("migration %s: the copies could not be compared yet (%s); retrying", jid, e)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _conclude(self, job: Json, same: bool | None, why: str) -> None:
        """After the flip: collect the source only when its copy was compared equal."""
        jid, ns = job["id"], job["namespace"]
        if same is None:
            log.error("migration %s: the copies of %s could not be compared (%s); source range kept", jid, ns, why)
            await self._update(jid, status="done", finishedAt=self.clock(),
                               error=f"the copies were not compared ({why}); the source range is kept, not collected")
            return
        if not same:
            # Cannot happen if apply is deterministic; if it does, keep the source
            # range (not collected) for inspection and say so loudly.
            log.error("migration %s: the copy of %s differs from its source; source range kept", jid, ns)
            await self._update(jid, status="done", finishedAt=self.clock(),
                               error="the copy differs from the source (kept for inspection)")
            return
        await self._update(jid, compared=True)  # a coordinator that takes over may collect
        await self._collect(job)

    async def _finish(self, job: Json) -> None:
        """A flipped job left unfinished (a new coordinator, a late error): activate,
        compare, collect, done. The copies can still be compared while the
        destination is not active (both are frozen); once it is, they cannot, and
        unless the job recorded an equal comparison the source range is kept."""
        org, ns, jid = job["org"], job["namespace"], job["id"]
        src, dst = job["fromPartition"], job["toPartition"]
        if (self.rep.meta.job(jid) or job).get("compared"):
            await self._shard(dst, org, ns, "mig.activate", job=jid)
            await self._collect(job)
            return
        arrived = await self.reads.state(dst, org, ns)
        if arrived is not None and arrived.get("role") == "dst" and arrived.get("job") == jid:
            src_digest = await self.reads.open_hash(src, org, ns)
            dst_digest = await self.reads.open_hash(dst, org, ns)
            await self._shard(dst, org, ns, "mig.activate", job=jid)
            same, why = await self._compare(jid, src_digest, dst_digest)
        else:
            await self._shard(dst, org, ns, "mig.activate", job=jid)
            same, why = None, "the destination went live before its coordinator compared them"
        await self._conclude(job, same, why)

    async def _collect(self, job: Json) -> None:
        """The destination is active: drop the source range (in batches), then the job is done."""
        org, ns, jid = job["org"], job["namespace"], job["id"]
        while not (await self._shard(job["fromPartition"], org, ns, "mig.gc", job=jid,
                                     to=job["toPartition"])).get("done"):
            await asyncio.sleep(0)
        await self._update(jid, status="done", finishedAt=self.clock())
        log.info("migration %s: %s/%s moved to partition %d", jid, org, ns, job["toPartition"])

    async def _clean(self, group: int, org: str, ns: str, op: str, jid: str) -> None:
        try:
            while not (await self._shard(group, org, ns, op, job=jid)).get("done", True):
                await asyncio.sleep(0)
            log.warning("migration %s: cleared its leftover %s state in partition %d", jid, op, group)
        except MigrationError as e:
            log.warning("migration %s: leftover state in partition %d not cleared: %s", jid, group, e)

    async def _abort(self, job: Json, why: str) -> None:
        """Undo a job that has not flipped. The intent is committed first: from then
        on the meta group refuses the job's pin, so a coordinator that lost its
        leadership mid-cutover can no longer flip it; if the pin won the race,
        the job is finished instead."""
        org, ns, jid = job["org"], job["namespace"], job["id"]
        data = msgpack.packb({"op": "mig.update", "id": jid, "claim": self._claims.get(jid), "aborting": True},
                             use_bin_type=True)
        res = await self._retry(lambda: self.rep.propose(self.rep.meta_group, data))
        if not res.get("ok"):
            if _superseded(res):
                raise Superseded(res.get("message", "superseded"))
            if (res.get("details") or {}).get("flipped"):
                log.warning("migration %s flipped before it could be aborted (%s); finishing it", jid, why)
                await self._finish(job)
            elif res.get("code") != "failed_precondition":  # failed_precondition: already terminal
                log.warning("migration %s: could not record its abort: %s", jid, res.get("message"))
            return
        try:
            await self._shard(job["fromPartition"], org, ns, "mig.unfence", job=jid)
            while not (await self._shard(job["toPartition"], org, ns, "mig.drop", job=jid)).get("done"):
                await asyncio.sleep(0)
        except Superseded:
            raise
        except Exception as e:  # noqa: BLE001 - the job still ends failed; a retry cleans up
            log.warning("migration %s: cleanup after abort incomplete: %s", jid, e)
        try:
            await self._update(jid, status="failed", finishedAt=self.clock(), error=why)
        except Superseded:
            raise
        except Exception as e:  # noqa: BLE001
            log.warning("migration %s: could not record its failure: %s", jid, e)

    # ---- steps -------------------------------------------------------------------------

    async def _snapshot_with_restarts(self, src: int, dst: int, org: str, ns: str, jid: str) -> tuple[int, int]:
        """The snapshot, started again from a fresh view each time it gives way
        to a growth of the source's map (at most ``SNAPSHOT_ATTEMPTS`` copies).

        Each copy is numbered; ``mig.incoming`` with a higher number drops the
        half-made copy (a key deleted at the source between the two views would
        otherwise stay at the destination), and a chunk of an older copy that
        lands late is ignored.
        """
        for copy in range(1, SNAPSHOT_ATTEMPTS + 1):
            if copy > 1:
                while not (await self._shard(dst, org, ns, "mig.incoming", job=jid, copy=copy)).get("cleared"):
                    pass  # a big half-made copy is dropped in batches
                await self._update(jid, bytes=0)
            try:
                return await self._stream_snapshot(src, dst, org, ns, jid, copy)
            except SnapshotYielded as e:
                if copy == SNAPSHOT_ATTEMPTS:
                    raise MigrationError(f"{e} ({copy} copies gave way to it); retry the job") from None
                log.info("migration %s: copy %d gave way (%s); starting afresh", jid, copy, e)
        raise AssertionError("unreachable")

    async def _stream_snapshot(self, src: int, dst: int, org: str, ns: str, jid: str,
                               copy: int = 1) -> tuple[int, int]:
        """Copy the shard's range from one read view of a source replica.

        A reader thread on the node holding the view (this one, or a replica
        the coordinator pulls from) hands chunks over through a small queue;
        ``CHUNKS_IN_FLIGHT`` chunk proposals go out at a time, so memory stays
        at a few chunks. The view is one LMDB read transaction held for the
        whole copy; if the source's map must grow meanwhile (growth waits for
        readers), the copy gives way (``SnapshotYielded``).
        Returns (the tail position the copy contains, bytes sent).
        """
        reader = await self.reads.snapshot(src, org, ns, jid)
        try:
            _, base, snapshot_index = await reader.take()
            await self._update(jid, snapshotIndex=snapshot_index)
            sent, n, started, done = 0, 0, time.monotonic(), False
            while not done:
                window: list[list[list[bytes]]] = []
                while len(window) < CHUNKS_IN_FLIGHT:
                    item = await reader.take()
                    if item is None:
                        done = True
                        break
                    window.append(item)
                await asyncio.gather(*(self._chunk(dst, org, ns, jid, n + i, pairs, base=base, copy=copy)
                                       for i, pairs in enumerate(window)))
                n += len(window)
                sent += sum(len(k) + len(v) for pairs in window for k, v in pairs)
                await self._pace(sent, started)
                if n % (8 * CHUNKS_IN_FLIGHT) < CHUNKS_IN_FLIGHT:
                    await self._update(jid, bytes=sent)
            return base, sent
        finally:
            reader.close()

    async def _tail(self, src: int, org: str, ns: str, after: int) -> list[tuple[int, int, bytes]]:
        return await self.reads.tail(src, org, ns, after, TAIL_BATCH)

    async def _forward(self, dst: int, org: str, ns: str, jid: str, entries: list[tuple[int, int, bytes]]) -> int:
        await self._shard(dst, org, ns, "mig.tail", job=jid, **{"from": entries[0][0]},
                          entries=[[index, data] for _, index, data in entries])
        return entries[-1][0]

    async def _chunk(
        self, dst: int, org: str, ns: str, jid: str, n: int, pairs: list[list[bytes]], base: int, copy: int = 1
    ) -> None:
        extra = {"copy": copy} if copy > 1 else {}  # the first copy's chunks read as before
        await self._shard(dst, org, ns, "mig.chunk", job=jid, n=n, pairs=pairs, crc=moving.chunk_crc(pairs),
                          base=base, **extra)

    async def _pace(self, sent: int, started: float) -> None:
        ahead = sent / self.bandwidth - (time.monotonic() - started)
        if ahead > 0:
            await asyncio.sleep(ahead)

    async def _update(self, jid: str, **fields: Any) -> None:
        await self._meta({"op": "mig.update", "id": jid, "claim": self._claims.get(jid), **fields})

    async def _meta(self, cmd: Json) -> Json:
        data = msgpack.packb(cmd, use_bin_type=True)
        res = await self._retry(lambda: self.rep.propose(self.rep.meta_group, data))
        if not res.get("ok"):
            if _superseded(res):
                raise Superseded(res.get("message", "superseded"))
            raise MigrationError(res.get("message", "meta group refused the step"))
        return res

    async def _shard(self, group: int, org: str, ns: str, op: str, **fields: Any) -> Json:
        """One step in a partition; a job's steps carry this coordinator's claim on it."""
        claim = self._claims.get(fields.get("job", ""))
        if claim is not None:
            fields["claim"] = claim
        cmd = {"v": 1, "op": op, "org": org, "ns": ns, "now": self.clock(), **fields}
        data = encode(cmd)
        res = await self._retry(lambda: self.rep.propose(group, data))
        if not res.get("ok"):
            if _superseded(res):
                raise Superseded(f"{op} refused by partition {group}: {res.get('message')}")
            raise MigrationError(f"{op} refused by partition {group}: {res.get('message', res.get('code'))}")
        return res

    async def _retry(self, call: Callable[[], Any]) -> Json:
        """Every step is idempotent: retry it while its group is unavailable."""
        deadline = time.monotonic() + STEP_RETRY_FOR
        delay = 0.05
        while True:
            try:
                res = await call()
            except Exception as e:  # NotLeader and friends
                res = {"ok": False, "code": "unavailable", "message": str(e)}
            if res.get("ok") or res.get("code") != "unavailable" or time.monotonic() > deadline:
                return res
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)


def range_hash(txn: Any, org: str, ns: str) -> str:
    """sha256 over a shard's keys and values: equal copies hash equal."""
    return hash_range(txn, org, ns)


def shard_counts(rep: Replicator) -> dict[int, int]:
    """Shards per partition, from this node's replicas."""
    out = {}
    for p in range(rep.partitions):
        if rep.is_local(p):
            with rep.store(p).read() as txn:
                out[p] = len(reads.shards(txn))
    return out
