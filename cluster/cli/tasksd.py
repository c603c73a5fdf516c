"""``tasksd``: run a node.

    tasksd [serve] [flags]      run a node (no flags: a single node, data in ./tasks-data,
                                HTTP on 127.0.0.1:7243)
    tasksd dev-cluster --nodes 3    a local Raft cluster (ports 7243/9999/7300 + i - 1)
    tasksd version              print the version
    tasksd serve --help         every configuration key, with its default

Exit codes: 0 clean stop, 1 runtime failure, 2 configuration or usage error.
A runtime failure includes the watchdog's stop: replication cannot go on in
this process (the Raft thread died, a journal failed on an I/O error such as a
full disk, or applying a committed entry failed); the node reports it on
/readyz and in the log, then exits 1 for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from hanzo_tasks.cluster.cli.devcluster import main as dev_cluster
from hanzo_tasks.cluster.config import ConfigError, build_arg_parser, load_config
from hanzo_tasks.cluster.logs import setup_logging
from hanzo_tasks.cluster.node import (
    ConfigMismatch,
    Node,
    package_version,
    read_secret,
    run_until_signalled,
)
from hanzo_tasks.cluster.service import wall_ms

USAGE = __doc__ or ""
EXIT_FAILURE = 1  # SPEC §10: runtime failure (the watchdog's stop included)


def _install_loop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass


def _clock_from_env(env: os._Environ[str] | dict[str, str]):
    """The node's wall clock, optionally skewed by ``TASKS_CLOCK_SKEW_MS``.

    A fault-injection hook for the chaos suite (clock skew on one node): the
    proposer stamps this clock into commands, so a skewed node proposes skewed
    times while the state machine itself stays deterministic.
    """
    raw = env.get("TASKS_CLOCK_SKEW_MS", "").strip()
    if not raw:
        return wall_ms
    try:
        skew = int(raw)
    except ValueError:
        raise ConfigError(f"TASKS_CLOCK_SKEW_MS must be an integer, got {raw!r}") from None
    logging.getLogger("tasks").warning("wall clock skewed by %d ms (TASKS_CLOCK_SKEW_MS)", skew)
    return lambda: wall_ms() + skew


def serve(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        build_arg_parser().print_help()
        return 0
    try:
        cfg = load_config(argv, os.environ)
        clock = _clock_from_env(os.environ)
    except ConfigError as e:
        print(f"tasksd: {e}", file=sys.stderr)
        return 2
    setup_logging(cfg.log_level, cfg.log_format)
    if cfg.replicator == "raft":
        try:
            read_secret(cfg.cluster_secret_file)
        except (OSError, ValueError) as e:
            print(f"tasksd: {e}", file=sys.stderr)
            return 2
    _install_loop()
    try:
        node = Node(cfg, clock=clock)
    except ConfigError as e:  # a key source of auth.* that cannot be used
        print(f"tasksd: {e}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_until_signalled(node))
    except ConfigMismatch as e:
        print(f"tasksd: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        logging.getLogger("tasks").error("cannot start: %s", e)
        return 1
    except Exception:
        logging.getLogger("tasks").exception("node failed")
        return 1
    if node.failure:
        print(f"tasksd: replication failed: {node.failure}", file=sys.stderr)
        return EXIT_FAILURE
    if node.fatal:
        print(f"tasksd: {node.fatal}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(USAGE.strip())
        return 0
    if args and args[0] == "version":
        print(f"tasksd {package_version()}")
        return 0
    if args and args[0] == "dev-cluster":
        return dev_cluster(args[1:])
    if args and args[0] == "serve":
        args = args[1:]
    elif args and not args[0].startswith("-"):
        print(f"tasksd: unknown command {args[0]!r}\n\n{USAGE.strip()}", file=sys.stderr)
        return 2
    return serve(args)


if __name__ == "__main__":
    sys.exit(main())
