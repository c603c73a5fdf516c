"""The route table: every request opcode, the handler that serves it, the least
role it needs when auth is on, and whether it is a read (read barrier first)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from hanzo_tasks.cluster.api.zap.call import Call, Handler
from hanzo_tasks.cluster.api.zap.ops_namespaces import (
    ns_name,
    op_describe_namespace,
    op_list_namespaces,
    op_register_namespace,
)
from hanzo_tasks.cluster.api.zap.ops_node import op_health
from hanzo_tasks.cluster.api.zap.ops_results import op_workflow_result
from hanzo_tasks.cluster.api.zap.ops_schedules import (
    op_create_schedule,
    op_delete_schedule,
    op_describe_schedule,
    op_list_schedules,
    op_pause_schedule,
    op_schedule_recurring,
    op_trigger_schedule,
    op_unpause_schedule,
    op_update_schedule,
)
from hanzo_tasks.cluster.api.zap.ops_workers import (
    op_activity_task_completed,
    op_activity_task_failed,
    op_heartbeat,
    op_respond_query,
    op_schedule_activity,
    op_subscribe_activity_tasks,
    op_subscribe_workflow_tasks,
    op_unsubscribe,
    op_workflow_task_completed,
    op_workflow_task_failed,
)
from hanzo_tasks.cluster.api.zap.ops_workflows import (
    op_cancel,
    op_describe,
    op_history,
    op_list_workflows,
    op_query,
    op_reset,
    op_signal,
    op_signal_with_start,
    op_start,
    op_submit_task,
    op_terminate,
)
from hanzo_tasks.protocol import zap as Z
from hanzo_tasks.protocol.names import ADMIN, DEVELOPER, VIEWER


@dataclass(frozen=True, slots=True)
class Route:
    handler: Handler
    role: str
    """The least role a session needs when auth is on (SPEC §5.13; the roles of the matching HTTP routes)."""
    read: bool = False
    """Reads pass the service's read barrier first, as HTTP GETs do (§4.1 "Reads")."""
    barrier_ns: Callable[[Call], str] | None = None


ROUTES: dict[int, Route] = {
    Z.Op.SubmitTask: Route(op_submit_task, DEVELOPER),
    Z.Op.ScheduleRecurring: Route(op_schedule_recurring, ADMIN),
    Z.Op.StartWorkflow: Route(op_start, DEVELOPER),
    Z.Op.SignalWorkflow: Route(op_signal, DEVELOPER),
    Z.Op.CancelWorkflow: Route(op_cancel, DEVELOPER),
    Z.Op.TerminateWorkflow: Route(op_terminate, DEVELOPER),
    Z.Op.DescribeWorkflow: Route(op_describe, VIEWER, read=True),
    Z.Op.ListWorkflows: Route(op_list_workflows, VIEWER, read=True),
    Z.Op.GetWorkflowHistory: Route(op_history, VIEWER, read=True),
    Z.Op.QueryWorkflow: Route(op_query, VIEWER, read=True),
    Z.Op.ResetWorkflow: Route(op_reset, DEVELOPER),
    Z.Op.GetWorkflowResult: Route(op_workflow_result, VIEWER, read=True),
    Z.Op.SignalWithStart: Route(op_signal_with_start, DEVELOPER),
    Z.Op.CreateSchedule: Route(op_create_schedule, ADMIN),
    Z.Op.DeleteSchedule: Route(op_delete_schedule, ADMIN),
    Z.Op.ListSchedules: Route(op_list_schedules, VIEWER, read=True),
    Z.Op.PauseSchedule: Route(op_pause_schedule, ADMIN),
    Z.Op.UnpauseSchedule: Route(op_unpause_schedule, ADMIN),
    Z.Op.TriggerSchedule: Route(op_trigger_schedule, ADMIN),
    Z.Op.DescribeSchedule: Route(op_describe_schedule, VIEWER, read=True),
    Z.Op.UpdateSchedule: Route(op_update_schedule, ADMIN),
    Z.Op.RegisterNamespace: Route(op_register_namespace, ADMIN),
    Z.Op.DescribeNamespace: Route(op_describe_namespace, VIEWER, read=True, barrier_ns=ns_name),
    Z.Op.ListNamespaces: Route(op_list_namespaces, VIEWER),
    Z.Op.Health: Route(op_health, VIEWER),
    Z.Op.SubscribeWorkflowTasks: Route(op_subscribe_workflow_tasks, DEVELOPER),
    Z.Op.Unsubscribe: Route(op_unsubscribe, DEVELOPER),
    Z.Op.SubscribeActivityTasks: Route(op_subscribe_activity_tasks, DEVELOPER),
    Z.Op.RespondActivityTaskCompleted: Route(op_activity_task_completed, DEVELOPER),
    Z.Op.RespondActivityTaskFailed: Route(op_activity_task_failed, DEVELOPER),
    Z.Op.RespondWorkflowTaskCompleted: Route(op_workflow_task_completed, DEVELOPER),
    Z.Op.RespondWorkflowTaskFailed: Route(op_workflow_task_failed, DEVELOPER),
    Z.Op.RecordHeartbeat: Route(op_heartbeat, DEVELOPER),
    Z.Op.RespondQuery: Route(op_respond_query, DEVELOPER),
    Z.Op.ScheduleActivity: Route(op_schedule_activity, DEVELOPER),
}
"""Every request opcode but Hello (handled by the connection itself)."""
