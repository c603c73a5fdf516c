"""A copy that gives way to a growth of the source's map starts afresh.

LMDB grows a map only while no read view is open, and a paced snapshot holds
one for seconds, so the copy steps aside (``SnapshotYielded``). The job must
not fail for it: the coordinator drops the half-made copy and takes a new
view, a bounded number of times. A fault point makes the source's reader give
way after handing over one chunk that carries a key the real source does not
have (as a key deleted between the two views would be): the job can only end
with equal copies if that half-made copy was dropped.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import hanzo_tasks.migration.coordinator as coordinator
from hanzo_tasks.migration import Migrations
from hanzo_tasks.migration.remote import SnapshotYielded
from hanzo_tasks.shard import keys

from tests.migration.inproc import ORG, Cluster
from tests.migration.test_coordinator_safety import EMPTY, META, coord, ranges, settle, setup


class YieldingReader:
    """The real reader's first item (the start marker), then one chunk with a
    stray key, then the map growth's ``SnapshotYielded``."""

    def __init__(self, inner: Any, ns: str) -> None:
        self.inner, self.ns, self.step = inner, ns, 0

    async def take(self) -> Any:
        self.step += 1
        if self.step == 1:
            return await self.inner.take()
        if self.step == 2:
            return [[keys.shard_prefix(ORG, self.ns) + b"stray", b"from a view that was given up"]]
        raise SnapshotYielded("the source partition's map is growing")

    def close(self) -> None:
        self.inner.close()


def yielding(mig: Migrations, ns: str, times: int) -> list[int]:
    """The first ``times`` snapshots give way; later ones are the real reader."""
    real = mig.reads.snapshot
    opened = [0]

    async def snapshot(group: int, org: str, ns_: str, jid: str) -> Any:
        opened[0] += 1
        reader = await real(group, org, ns_, jid)
        return YieldingReader(reader, ns) if opened[0] <= times else reader

    mig.reads.snapshot = snapshot  # type: ignore[method-assign]
    return opened


async def _scenario(root: Path, ns: str, yields: int) -> tuple[dict, set[str], set[str], int]:
    c = Cluster(root)
    await c.start()
    try:
        src, dst = await setup(c, ns)
        await settle(c)
        before = ranges(c, src, ns)
        mig = coord(c, c.leader(META) or c.ids[0])
        opened = yielding(mig, ns, yields)
        job = await mig.create(ORG, ns, src, dst)
        await asyncio.wait_for(mig._run(job), 60.0)
        await settle(c)
        return mig.job(job["id"]), before, ranges(c, dst, ns), opened[0]
    finally:
        await c.stop()


def test_a_copy_that_gives_way_starts_afresh_without_the_half_made_copy(tmp_path: Path) -> None:
    job, before, dst_after, opened = asyncio.run(_scenario(tmp_path, "grow", yields=2))
    assert opened == 3, "the copy was not started again after giving way"
    assert job["status"] == "done" and job["error"] is None, job
    assert dst_after == before, "the destination kept keys of a copy that was given up"


def test_a_copy_that_keeps_giving_way_fails_the_job_with_a_clear_error(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(coordinator, "SNAPSHOT_ATTEMPTS", 2)
    job, before, dst_after, opened = asyncio.run(_scenario(tmp_path, "full", yields=10))
    assert opened == 2
    assert job["status"] == "failed" and "map is growing" in job["error"] and "retry the job" in job["error"], job
    assert dst_after == {EMPTY}, "the aborted copy was not dropped"
