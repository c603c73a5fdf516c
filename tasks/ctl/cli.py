"""``main``: parse the command line, build the context, run one subcommand and
turn its outcome into an exit code (0 ok, 1 API or connection error, 2 usage)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from collections.abc import Mapping

from hanzo_tasks.ctl.context import Ctx
from hanzo_tasks.ctl.errors import ApiError, UsageError
from hanzo_tasks.ctl.parser import build_parser
from hanzo_tasks.ctl.transport import DEFAULT_URL, Api, tls_context


def _env(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value if value else None  # an empty variable counts as unset


def main(argv: list[str] | None = None) -> int:
    """Run tasksctl; returns the exit code (the console script exits with it)."""
    args_list = sys.argv[1:] if argv is None else list(argv)
    out, err = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(args_list)
    except UsageError as exc:
        bad_parser = exc.args[1] if len(exc.args) > 1 else parser
        err.write(bad_parser.format_usage())
        err.write(f"error: usage: {exc.args[0]}\n")
        return 2
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    if args.func is None:  # a group without its subcommand: teach, then usage error
        args.help_parser.print_help(err)
        return 2
    url = getattr(args, "url", None) or _env(os.environ, "TASKS_URL") or DEFAULT_URL
    if not re.match(r"https?://[^/]", url):
        err.write(f"error: usage: --url must be an http:// or https:// URL, got {url!r}\n")
        return 2
    args.namespace = getattr(args, "namespace", None) or _env(os.environ, "TASKS_NAMESPACE") or "default"
    args.output = getattr(args, "output", None) or "table"
    token = getattr(args, "token", None) or _env(os.environ, "TASKS_AUTH_TOKEN")
    tls_files = {name: getattr(args, name, None) or _env(os.environ, f"TASKS_{name.upper()}")
                 for name in ("ca_file", "cert_file", "key_file")}
    try:
        tls = tls_context(**tls_files) if url.startswith("https://") else None
    except ValueError as exc:
        err.write(f"error: usage: {exc}\n")
        return 2
    ctx = Ctx(Api(url, token, tls=tls), args, out, err)
    try:
        return args.func(ctx)
    except BrokenPipeError:  # `tasksctl wf list | head`: the reader left; that is not an error
        with contextlib.suppress(Exception):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except UsageError as exc:
        err.write(f"error: usage: {exc.args[0]}\n")
        return 2
    except ApiError as exc:
        err.write(f"error: {exc.code}: {exc.message}\n")
        if exc.details:
            err.write(f"details: {json.dumps(exc.details, ensure_ascii=False)}\n")
        return 1
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return 130
