"""Hanzo Tasks: durable tasks, schedules and workflows.

The one public face of the package::

    import hanzo_tasks as tasks

    client = tasks.Client()                 # local mode: runs in this process
    client.add("report", "5m", make_report) # every 5 minutes
    client.now("send-email", {"to": "a@b"}) # once, in the background

Point the client at a server (``tasks.Client("http://tasks:8080")``) and the
same calls become durable, and ``tasks.Worker`` runs handlers for the
tasks the server pushes over ZAP. Importing this package loads no server code.
"""

from hanzo_tasks.client import Client, default, set_default
from hanzo_tasks.embed import Embedded, embed
from hanzo_tasks.errors import (
    ActivityError,
    AlreadyExists,
    AlreadyStarted,
    Canceled,
    FailedPrecondition,
    Internal,
    InvalidArgument,
    NoHandler,
    NonRetryableError,
    NotFound,
    NoWorkers,
    PermissionDenied,
    RateLimited,
    StorageFull,
    TasksError,
    Timeout,
    TooLarge,
    Unauthenticated,
    Unavailable,
    Unsupported,
    WorkflowCanceled,
    WorkflowContinuedAsNew,
    WorkflowFailed,
    WorkflowTerminated,
    WorkflowTimedOut,
)
from hanzo_tasks.handle import WorkflowHandle
from hanzo_tasks.worker import ActivityContext, TaskContext, Worker, context
from hanzo_tasks.workflow import RetryPolicy, activity, workflow

__all__ = [
    "ActivityContext",
    "RetryPolicy",
    "ActivityError",
    "AlreadyExists",
    "AlreadyStarted",
    "Canceled",
    "Client",
    "Embedded",
    "FailedPrecondition",
    "Internal",
    "InvalidArgument",
    "NoHandler",
    "NoWorkers",
    "NonRetryableError",
    "NotFound",
    "PermissionDenied",
    "RateLimited",
    "StorageFull",
    "TaskContext",
    "TasksError",
    "Timeout",
    "TooLarge",
    "Unauthenticated",
    "Unavailable",
    "Unsupported",
    "Worker",
    "WorkflowCanceled",
    "WorkflowContinuedAsNew",
    "WorkflowFailed",
    "WorkflowHandle",
    "WorkflowTerminated",
    "WorkflowTimedOut",
    "activity",
    "context",
    "default",
    "embed",
    "set_default",
    "workflow",
]
