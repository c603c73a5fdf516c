"""The whole ``tasksctl`` command tree: global options, groups, subcommands and
their help texts, each subcommand bound to its ``cmd_*`` function."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from hanzo_tasks.ctl.cluster import cmd_cluster_health, cmd_cluster_status
from hanzo_tasks.ctl.context import Ctx
from hanzo_tasks.ctl.errors import UsageError
from hanzo_tasks.ctl.migrations import cmd_migrate, cmd_migrations_describe, cmd_migrations_list
from hanzo_tasks.ctl.namespaces import cmd_ns_create, cmd_ns_delete, cmd_ns_describe, cmd_ns_list
from hanzo_tasks.ctl.schedules import (
    cmd_schedule_create,
    cmd_schedule_delete,
    cmd_schedule_describe,
    cmd_schedule_list,
    cmd_schedule_pause,
    cmd_schedule_times,
    cmd_schedule_trigger,
    cmd_schedule_unpause,
)
from hanzo_tasks.ctl.transport import DEFAULT_URL
from hanzo_tasks.ctl.workflows import (
    cmd_wf_cancel,
    cmd_wf_describe,
    cmd_wf_history,
    cmd_wf_list,
    cmd_wf_query,
    cmd_wf_reset,
    cmd_wf_result,
    cmd_wf_signal,
    cmd_wf_start,
    cmd_wf_terminate,
)


class _Parser(argparse.ArgumentParser):
    """Raises UsageError instead of printing and exiting, so main() owns the
    error format and the exit code."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise UsageError(message, self)


_MAIN_EPILOG = """\
environment:
  TASKS_URL          server URL (default http://127.0.0.1:7243)
  TASKS_AUTH_TOKEN   bearer token
  TASKS_NAMESPACE    namespace (default "default")
  TASKS_CA_FILE      CA bundle that verifies an https:// server (default: the system's)
  TASKS_CERT_FILE    client certificate (PEM), with TASKS_KEY_FILE, for servers that ask for one

examples:
  tasksctl wf start charge-card --input '{"amount": 42}' --wait
  tasksctl wf result charge-card-3f9a01bc
  tasksctl -n prod wf list --query 'ExecutionStatus="Running"'
  tasksctl schedule create nightly --spec '0 3 * * *' --type report
  tasksctl --output json cluster status

Exit status: 0 ok, 1 API or connection error, 2 usage error.
"""


def _globals_parent(suppress: bool) -> argparse.ArgumentParser:
    """The global options. Added to the root parser and, with defaults
    suppressed, to every subcommand, so they work before or after it."""
    p = argparse.ArgumentParser(add_help=False)
    d = argparse.SUPPRESS if suppress else None
    p.add_argument("--url", default=d, help=f"server URL (env TASKS_URL; default {DEFAULT_URL})")
    p.add_argument("--token", default=d, help="bearer token (env TASKS_AUTH_TOKEN)")
    p.add_argument("-n", "--namespace", default=d, help="namespace (env TASKS_NAMESPACE; default 'default')")
    p.add_argument("-o", "--output", choices=("json", "table"), default=d, help="output format (default table)")
    p.add_argument("--ca-file", default=d, metavar="PATH",
                   help="CA bundle (PEM) that verifies an https:// server (env TASKS_CA_FILE)")
    p.add_argument("--cert-file", default=d, metavar="PATH",
                   help="client certificate (PEM) for a server that asks for one (env TASKS_CERT_FILE)")
    p.add_argument("--key-file", default=d, metavar="PATH", help="key of --cert-file (env TASKS_KEY_FILE)")
    return p


class _Builder:
    """Helper that adds subcommands with a description, examples and globals."""

    def __init__(self) -> None:
        self.parent = _globals_parent(suppress=True)

    def group(self, subs: Any, name: str, help: str, epilog: str) -> tuple[argparse.ArgumentParser, Any]:
        parser = subs.add_parser(
            name, help=help, description=help, epilog=epilog, parents=[self.parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=None, help_parser=parser)
        return parser, parser.add_subparsers(title="commands", metavar="COMMAND")

    def command(
        self, subs: Any, name: str, help: str, func: Callable[[Ctx], int], epilog: str = ""
    ) -> argparse.ArgumentParser:
        parser = subs.add_parser(
            name, help=help, description=help, epilog=epilog or None, parents=[self.parent],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        parser.set_defaults(func=func, help_parser=parser)
        return parser


def _paging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--page-size", type=int, metavar="N", help="items per page (1-1000)")
    parser.add_argument("--all", action="store_true", help="follow nextPageToken and print every page")


def build_parser() -> argparse.ArgumentParser:
    """The whole tasksctl command tree."""
    root = _Parser(
        prog="tasksctl",
        description="Command-line client for a Hanzo Tasks server (HTTP API).",
        epilog=_MAIN_EPILOG,
        parents=[_globals_parent(suppress=False)],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    root.set_defaults(func=None, help_parser=root)
    b = _Builder()
    top = root.add_subparsers(title="commands", metavar="COMMAND", parser_class=_Parser)

    # cluster
    _, cl = b.group(top, "cluster", "cluster membership, partitions and health",
                    "examples:\n  tasksctl cluster status\n  tasksctl cluster health || echo degraded")
    b.command(cl, "status", "show members, partitions, shards and stats (GET /v1/tasks/cluster)", cmd_cluster_status)
    b.command(cl, "health", "quorum health of this node's groups; exits 1 when degraded", cmd_cluster_health)

    # namespaces
    _, ns = b.group(top, "ns", "list, create, describe and delete namespaces",
                    "examples:\n  tasksctl ns create payments --retention 168h --description 'card payments'\n  tasksctl ns list")
    p = b.command(ns, "list", "list namespaces", cmd_ns_list)
    _paging(p)
    p = b.command(ns, "create", "register a namespace", cmd_ns_create,
                  "example:\n  tasksctl ns create payments --retention 720h")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--retention", metavar="DURATION", help="closed-run retention, e.g. 720h (default 720h)")
    p.add_argument("--description", metavar="TEXT")
    p = b.command(ns, "describe", "show one namespace", cmd_ns_describe)
    p.add_argument("name", metavar="NAME")
    p = b.command(ns, "delete", "mark a namespace DELETED (purged after its retention)", cmd_ns_delete)
    p.add_argument("name", metavar="NAME")

    # workflows
    _, wf = b.group(top, "wf", "start, inspect and control workflows (in --namespace)",
                    "examples:\n  tasksctl wf start charge-card --id order-17 --input @order.json\n"
                    "  tasksctl wf history order-17\n  tasksctl wf signal order-17 approve --input true")
    p = b.command(wf, "start", "start a workflow", cmd_wf_start,
                  "examples:\n  tasksctl wf start charge-card --input '{\"amount\": 42}'\n"
                  "  tasksctl wf start charge-card --input '{\"amount\": 42}' --wait --timeout 1m\n"
                  "  tasksctl wf start report --id daily-report --queue reports --request-id r-1")
    p.add_argument("type", metavar="TYPE", help="workflow type")
    p.add_argument("--id", help="workflow id (default: generated from the type)")
    p.add_argument("--queue", default="default", metavar="Q", help="task queue (default 'default')")
    p.add_argument("--input", metavar="JSON|@FILE", help="input as JSON, @file or @- for stdin")
    p.add_argument("--request-id", metavar="R", help="idempotency key: a retry with it starts nothing new")
    p.add_argument("--wait", action="store_true",
                   help="wait for the run to close and print its result (exit 1 if it did not complete)")
    p.add_argument("--timeout", metavar="DURATION", help="with --wait: give up after this long (default: never)")
    p = b.command(wf, "result", "wait for a workflow's result and print it", cmd_wf_result,
                  "prints the result of the run once it closes (following continue-as-new);\n"
                  "a run that failed, was canceled, terminated or timed out exits 1 with its failure\n\n"
                  "examples:\n  tasksctl wf result order-17\n  tasksctl wf result order-17 --timeout 5m")
    p.add_argument("id", metavar="ID")
    p.add_argument("--run", "--run-id", dest="run", metavar="RUN_ID", help="that run (default: the latest)")
    p.add_argument("--timeout", metavar="DURATION", help="give up after this long (default: never)")
    p.add_argument("--no-follow", action="store_true", help="stop at a run that continued as new")
    p = b.command(wf, "describe", "show a workflow run (latest run by default)", cmd_wf_describe)
    p.add_argument("id", metavar="ID")
    p.add_argument("--run", metavar="RUN_ID")
    p = b.command(wf, "list", "list workflow runs, newest first", cmd_wf_list,
                  "examples:\n  tasksctl wf list --query 'WorkflowType=\"charge-card\"' --all")
    p.add_argument("--query", metavar="Q", help="visibility query")
    _paging(p)
    p = b.command(wf, "signal", "send a signal to a running workflow", cmd_wf_signal,
                  "example:\n  tasksctl wf signal order-17 approve --input '{\"by\": \"ana\"}'")
    p.add_argument("id", metavar="ID")
    p.add_argument("name", metavar="NAME", help="signal name")
    p.add_argument("--input", metavar="JSON|@FILE", help="signal payload")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--request-id", metavar="R")
    p = b.command(wf, "cancel", "request cancellation (the worker may clean up)", cmd_wf_cancel)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--run", metavar="RUN_ID")
    p = b.command(wf, "terminate", "stop a workflow at once, without running its code", cmd_wf_terminate)
    p.add_argument("id", metavar="ID")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--run", metavar="RUN_ID")
    p = b.command(wf, "history", "print the event history of a run (every page)", cmd_wf_history)
    p.add_argument("id", metavar="ID")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--reverse", action="store_true", help="newest event first")
    p.add_argument("--page-size", type=int, metavar="N", help="events per request")
    p = b.command(wf, "query", "query a workflow (answered by its worker)", cmd_wf_query,
                  "example:\n  tasksctl wf query order-17 __workflow_metadata")
    p.add_argument("id", metavar="ID")
    p.add_argument("query_type", metavar="TYPE", help="query type")
    p.add_argument("--args", metavar="JSON|@FILE", help="query arguments")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--timeout", metavar="DURATION", help="how long to wait (default 5s, max 30s)")
    p = b.command(wf, "reset", "start a new run from a point in the history", cmd_wf_reset,
                  "example:\n  tasksctl wf reset order-17 --event-id 4 --reason 'bad deploy'")
    p.add_argument("id", metavar="ID")
    p.add_argument("--event-id", type=int, required=True, metavar="N", help="last event kept (1..historyLength)")
    p.add_argument("--run", metavar="RUN_ID")
    p.add_argument("--reason", metavar="TEXT")
    p.add_argument("--request-id", metavar="R")

    # schedules
    _, sc = b.group(top, "schedule", "create and control durable schedules (in --namespace)",
                    "examples:\n  tasksctl schedule create nightly --spec '0 3 * * *' --type report\n"
                    "  tasksctl schedule create poll --spec 30s --type poll-feed --overlap skip\n"
                    "  tasksctl schedule times nightly")
    p = b.command(sc, "create", "create a schedule that starts a workflow type", cmd_schedule_create,
                  "--spec is an interval when it is a duration (30s, 1h30m), else a cron\n"
                  "expression ('0 3 * * *', '@hourly', 'CRON_TZ=Europe/Paris 0 9 * * MON').\n\n"
                  "examples:\n  tasksctl schedule create nightly --spec '0 3 * * *' --type report\n"
                  "  tasksctl schedule create tick --spec 5m --type tick --paused")
    p.add_argument("id", metavar="ID")
    p.add_argument("--spec", required=True, metavar="SPEC", help="duration (interval) or cron expression")
    p.add_argument("--type", required=True, metavar="T", help="workflow type to start")
    p.add_argument("--queue", default="default", metavar="Q", help="task queue (default 'default')")
    p.add_argument("--input", metavar="JSON|@FILE", help="workflow input")
    p.add_argument("--overlap", metavar="POLICY", help="skip, buffer_one, buffer_all, cancel_other, terminate_other, allow_all")
    p.add_argument("--paused", action="store_true", help="create it paused")
    p.add_argument("--note", metavar="TEXT", help="state note")
    p.add_argument("--upsert", action="store_true", help="replace an existing schedule of that id")
    p = b.command(sc, "list", "list schedules", cmd_schedule_list)
    _paging(p)
    p = b.command(sc, "describe", "show a schedule with its next and recent actions", cmd_schedule_describe)
    p.add_argument("id", metavar="ID")
    p = b.command(sc, "pause", "stop firing (times passed while paused are not replayed)", cmd_schedule_pause)
    p.add_argument("id", metavar="ID")
    p.add_argument("--note", metavar="TEXT")
    p = b.command(sc, "unpause", "resume firing", cmd_schedule_unpause)
    p.add_argument("id", metavar="ID")
    p.add_argument("--note", metavar="TEXT")
    p = b.command(sc, "trigger", "start the action now, even when paused", cmd_schedule_trigger)
    p.add_argument("id", metavar="ID")
    p.add_argument("--overlap", metavar="POLICY", help="overlap policy for this trigger")
    p.add_argument("--request-id", metavar="R")
    p = b.command(sc, "delete", "delete a schedule (started workflows keep running)", cmd_schedule_delete)
    p.add_argument("id", metavar="ID")
    p = b.command(sc, "times", "list the times the schedule matches (default: next 24h)", cmd_schedule_times,
                  "example:\n  tasksctl schedule times nightly --from 2026-05-01T00:00:00Z --to 2026-05-08T00:00:00Z")
    p.add_argument("id", metavar="ID")
    p.add_argument("--from", dest="from_", metavar="TIME", help="RFC 3339 start (default now)")
    p.add_argument("--to", metavar="TIME", help="RFC 3339 end (default from + 24h)")

    # migration
    p = b.command(top, "migrate", "move a namespace to a partition led by another node", cmd_migrate,
                  "examples:\n  tasksctl migrate payments --to n2\n  tasksctl migrate payments --to n3 --wait")
    p.add_argument("ns", metavar="NS", help="namespace to move")
    p.add_argument("--to", required=True, metavar="NODE", help="destination node id")
    p.add_argument("--wait", action="store_true", help="follow the job with a progress bar; exit 1 if it fails")
    _, mg = b.group(top, "migrations", "list and inspect namespace migration jobs",
                    "examples:\n  tasksctl migrations list\n  tasksctl migrations describe mig-0123456789abcdef")
    p = b.command(mg, "list", "list migration jobs, newest first", cmd_migrations_list)
    _paging(p)
    p = b.command(mg, "describe", "show one migration job", cmd_migrations_describe)
    p.add_argument("id", metavar="ID")
    return root
