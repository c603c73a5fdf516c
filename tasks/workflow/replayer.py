"""``Replayer``: replays a recorded history against today's code, for users' tests.

Why: a change to workflow code that reorders or renames what it awaits breaks
runs that are in flight when the new code is deployed. Replaying the saved
history of such a run (``GET NS/workflows/{id}/history``, or
``client``-side the same JSON) in a unit test catches that before deploying.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hanzo_tasks.errors import InvalidArgument
from hanzo_tasks.workflow.definitions import WorkflowDefinition, workflow_definition_of
from hanzo_tasks.workflow.executor import WorkflowExecutor, WorkflowInfo
from hanzo_tasks.workflow.history import events_of

__all__ = ["Replayer"]


class Replayer:
    """``Replayer([my_workflow]).replay(history)`` raises NonDeterminismError on a mismatch."""

    def __init__(self, workflows: Iterable[Any]) -> None:
        self._workflows: dict[str, WorkflowDefinition] = {}
        for w in workflows:
            defn = workflow_definition_of(w)
            self._workflows[defn.name] = defn

    def replay(
        self, history: Any, *, workflow_id: str = "replay", run_id: str | None = None
    ) -> None:
        """Replay ``history`` (a list of events or ``{"events": [...]}``).

        ``run_id`` seeds ``workflow.random()``/``uuid4()`` as on the server; give the
        run's id when the code's commands depend on them.
        """
        events = events_of(history)
        if not events or events[0].type != "WORKFLOW_EXECUTION_STARTED":
            raise InvalidArgument("the history must start with WORKFLOW_EXECUTION_STARTED")
        wtype = events[0].name_of("workflowType")
        defn = self._workflows.get(wtype or "")
        if defn is None:
            raise InvalidArgument(f"no workflow registered for type {wtype!r}")
        queue = events[0].name_of("taskQueue") or "default"
        info = WorkflowInfo(workflow_id, run_id or workflow_id, defn.name, task_queue=queue)
        ex = WorkflowExecutor(defn, info)
        try:
            if ex.activate(events) is None:
                ex.finish_replay()
        finally:
            ex.close()
