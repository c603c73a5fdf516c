"""``tasksctl migrate`` and ``tasksctl migrations``: move a namespace to another
node's partition, and follow the job (``--wait`` draws a progress bar)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from hanzo_tasks.ctl.context import Ctx, call_and_emit, more_hint, paged
from hanzo_tasks.ctl.errors import ApiError
from hanzo_tasks.ctl.output import human_bytes, scalar
from hanzo_tasks.ctl.transport import TRANSIENT, ns_path, seg

POLL_INTERVAL = 0.5  # seconds between migration polls (migrate --wait)
POLL_TOLERANCE = 20  # consecutive transient poll failures tolerated (~10 s)
_MIGRATION_STAGES = ("pending", "snapshotting", "catching-up", "cutover", "done")


def _migrations_table(ctx: Ctx) -> Callable[[Any], None]:
    def table(b: Any) -> None:
        ctx.table(
            ["ID", "NAMESPACE", "FROM", "TO", "STATUS", "BYTES", "TAIL", "FENCED MS", "STARTED"],
            [
                [
                    j.get("id"),
                    j.get("namespace"),
                    j.get("from"),
                    j.get("to"),
                    j.get("status"),
                    human_bytes(j.get("bytes")),
                    j.get("tailEntries"),
                    j.get("fencedMs"),
                    j.get("startedAt"),
                ]
                for j in b.get("jobs") or []
            ],
        )

    return table


def _progress_line(job: Mapping[str, Any]) -> str:
    status = str(job.get("status") or "?")
    stage = _MIGRATION_STAGES.index(status) if status in _MIGRATION_STAGES else 0
    width = 24
    filled = width * stage // (len(_MIGRATION_STAGES) - 1)
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"[{bar}] {status:<12} bytes={human_bytes(job.get('bytes'))} "
        f"tail={scalar(job.get('tailEntries'))} fenced={scalar(job.get('fencedMs'))}ms"
    )


def cmd_migrate(ctx: Ctx) -> int:
    a = ctx.args
    _, job = ctx.api.call("POST", f"{ns_path(a.ns)}/migrate", body={"toNode": a.to})
    if not a.wait:
        ctx.emit(job)
        return 0
    job_id = job.get("id") if isinstance(job, dict) else None
    if not job_id:
        raise ApiError("internal", "the migrate answer carries no job id")
    tty = hasattr(ctx.err, "isatty") and ctx.err.isatty()
    last_line = ""
    failures = 0
    while True:
        line = _progress_line(job)
        if line != last_line:
            if tty:
                ctx.err.write("\r" + line.ljust(len(last_line)))
            else:
                ctx.err.write(line + "\n")
            ctx.err.flush()
            last_line = line
        if job.get("status") in ("done", "failed"):
            break
        time.sleep(POLL_INTERVAL)
        try:
            _, job = ctx.api.call("GET", f"/v1/tasks/migrations/{seg(job_id)}")
            failures = 0
        except ApiError as exc:
            failures += 1
            if exc.code not in TRANSIENT or failures >= POLL_TOLERANCE:
                if tty:
                    ctx.err.write("\n")
                raise
    if tty:
        ctx.err.write("\n")
    ctx.emit(job)
    if job.get("status") == "failed":
        ctx.err.write(f"error: failed: migration {job_id} failed: {job.get('error') or 'unknown reason'}\n")
        return 1
    return 0


def cmd_migrations_list(ctx: Ctx) -> int:
    a = ctx.args
    body = paged(ctx, "/v1/tasks/migrations", "jobs", {"pageSize": a.page_size}, a.all)
    ctx.emit(body, _migrations_table(ctx))
    more_hint(ctx, body)
    return 0


def cmd_migrations_describe(ctx: Ctx) -> int:
    return call_and_emit(ctx, "GET", f"/v1/tasks/migrations/{seg(ctx.args.id)}")
