"""``tasksctl``: the command-line client of the HTTP API (SPEC §10.3).

It needs nothing of the server: the standard library, and of ``protocol`` only
``durations`` (itself standard library only), so that a spec is an interval
here exactly when the server reads it as one. (Being ``hanzo_tasks.ctl``, it is
loaded after the package's face, which imports the client library: that, not
this package, sets the start-up time.)

Every subcommand is one (or, when paging, a few) HTTP calls; the command
prints the body as JSON (``--output json``, exactly what the API answered,
pretty-printed) or as a compact human table.

Exit codes: 0 ok, 1 API or connection error, 2 usage error. Errors go to
stderr as ``error: <code>: <message>``.

The rooms: ``transport`` (the HTTP call and its error codes), ``output`` (tables
and records), ``context`` (Ctx and the steps subcommands share), one module per
command family (``cluster``, ``namespaces``, ``workflows``, ``schedules``,
``migrations``), ``parser`` (the command tree and its help) and ``cli`` (main).
"""

from __future__ import annotations

from hanzo_tasks.ctl.cli import main
from hanzo_tasks.ctl.errors import ApiError, UsageError
from hanzo_tasks.ctl.parser import build_parser
from hanzo_tasks.ctl.schedules import schedule_spec

__all__ = ["ApiError", "UsageError", "build_parser", "main", "schedule_spec"]
