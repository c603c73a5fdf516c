"""A barriered read that races a namespace flip (issue 23, defect 11).

Three in-process Raft nodes hold both partitions. Node R lags: its meta replica
has not seen the flip yet and its replica of the destination misses a write
acknowledged there after the flip. R is asked for a barriered read; a fault
point lets R's meta replica apply the pin exactly while R's barrier on the
source partition is in flight. The read must still reflect the write: the
partition that is read is the partition that was barriered.

The read point is taken both ways: by ReadIndex (no entry; the fault point
wraps ``read_index``) and by a barrier entry (``raft.read_index`` off; the
fault point wraps the barrier's proposal).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hanzo_tasks.migration import Migrations

from tests.migration.inproc import ORG, PARTITIONS, Cluster, fault_point, until

META = PARTITIONS


async def _scenario(root: Path, read_index: bool) -> tuple[dict | None, list[tuple[int, str]]]:
    c = Cluster(root)
    await c.start()
    try:
        ns = "flip"
        src = c.home(ns)
        dst = 1 - src
        coord_id = c.leader(META)
        assert coord_id is not None
        # R: a node that leads neither the meta group nor the destination.
        r_id = next(n for n in c.ids if n not in (coord_id, c.leader(dst)))
        coord = c.services[coord_id]
        mig = Migrations(c.reps[coord_id], node_id=coord_id, clock=lambda: 1_700_000_000_000)
        await mig.start()

        await coord.namespaces.register_namespace_in(ORG, ns, {})
        for i in range(5):
            await coord.workflows.start_workflow(ORG, ns, {"workflowId": f"w{i}", "workflowType": {"name": "T"}})
        r = c.services[r_id]
        await until(lambda: r.replicator.store(src).applied_index() >= c.reps[coord_id].store(src).applied_index(),
                    what="R caught up on the source")

        # R stops hearing the meta group and the destination partition.
        c.hold_elections(r_id, {META, dst}, 60.0)
        c.droppers[r_id].groups |= {META, dst}
        job = await mig.create(ORG, ns, src, dst)
        await until(lambda: (mig.job(job["id"]) or {}).get("status") in ("done", "failed"), 30.0, "the job")
        assert mig.job(job["id"])["status"] == "done", mig.job(job["id"])
        assert r.partition(ORG, ns) == src  # R has not seen the pin
        # A write acknowledged after the flip, on the destination; R's replica misses it.
        await coord.workflows.start_workflow(ORG, ns, {"workflowId": "after", "workflowType": {"name": "T"}})

        proposed: list[tuple[int, str]] = []

        async def before(group: int, command: bytes) -> None:
            if group == META:
                return
            op = msgpack.unpackb(command, raw=False).get("op")
            proposed.append((group, op))
            if group == src and op == "sys.barrier" and META in c.droppers[r_id].groups:
                # The pin lands while this barrier is in flight.
                c.droppers[r_id].groups.discard(META)
                await until(lambda: r.partition(ORG, ns) == dst, 10.0, "R applying the pin")
            if group == dst:
                c.droppers[r_id].groups.discard(dst)  # R's replica may catch up from here on

        if read_index:
            real = r.replicator.read_index

            async def read_index_at(group: int) -> Any:
                await before(group, msgpack.packb({"op": "sys.barrier"}))  # the same instant: the read point
                return await real(group)

            r.replicator.read_index = read_index_at  # type: ignore[method-assign]
        else:
            r.read_index = False
            fault_point(r.replicator, before)
        got = await asyncio.wait_for(r.read(ORG, ns, "run", "after", None, barrier=True), 20.0)
        await mig.stop()
        return got, proposed
    finally:
        await c.stop()


@pytest.mark.parametrize("read_index", [True, False], ids=["read-index", "barrier-entry"])
def test_a_barriered_read_reflects_a_write_made_after_a_flip_that_lands_during_the_barrier(
        tmp_path: Path, read_index: bool) -> None:
    got, proposed = asyncio.run(_scenario(tmp_path, read_index))
    assert got is not None and got["workflowId"] == "after", (
        f"stale read: the run started after the flip is missing; barriers proposed: {proposed}")
