"""The activity half of the worker: runs an activity handler and reports its outcome.

Why a module of its own: an activity's lifecycle (heartbeats only when the
activity asks for them, its result or failure as 0x00A3 / 0x00A4) is its
own, and much smaller than a workflow task's; keeping it apart keeps each half
readable on its own.
"""

from __future__ import annotations

from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.worker_context import Run, json_value, push_int
from hanzo_tasks.worker_transport import WorkerTransport, failure_of

MIN_ACTIVITY_HEARTBEAT_S = 0.1
"""Activity heartbeats: every max(this, heartbeat_timeout/2), when one is set."""


class ActivityTasks(WorkerTransport):
    """Runs pushed activity tasks (0xB1)."""

    async def _run_activity(self, run: Run) -> None:
        try:
            fn, args = self._call_for(run)
            hb_ms = push_int(run.body, "heartbeat_timeout_ms")
            interval = max(MIN_ACTIVITY_HEARTBEAT_S, hb_ms / 2000.0) if hb_ms > 0 else None
            outcome = await self._execute(run, fn, args, interval)
            if outcome is None:
                return
            base = {"task_token": run.token, "identity": self.identity}
            if outcome.kind == "ok":
                try:
                    result = json_value(outcome.value)
                except (TypeError, ValueError, OverflowError, RecursionError) as e:
                    failure = failure_of(e, type_name="SerializationError", non_retryable=True)
                    failure["message"] = f"result is not JSON-serializable: {e}"
                    await self._respond(
                        Z.Op.RespondActivityTaskFailed, base | {"failure": failure}, run
                    )
                    return
                await self._respond(
                    Z.Op.RespondActivityTaskCompleted, base | {"result": result}, run
                )
            elif outcome.kind == "canceled":
                failure = {"message": "canceled", "type": "CanceledError", "non_retryable": True}
                await self._respond(
                    Z.Op.RespondActivityTaskFailed, base | {"failure": failure}, run
                )
            else:
                assert outcome.exc is not None
                await self._respond(
                    Z.Op.RespondActivityTaskFailed, base | {"failure": failure_of(outcome.exc)}, run
                )
        finally:
            self._release(run)
