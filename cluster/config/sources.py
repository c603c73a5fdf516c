"""Where a config comes from: the four layers (flag > environment > YAML file >
default), the compatibility aliases of the environment, and the ``tasksd serve``
argument parser."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hanzo_tasks.cluster.config.kinds import CONFIG_ENV, ENV_PREFIX, Bool, ConfigError
from hanzo_tasks.cluster.config.tree import GROUPS, KEYS, Config, Layer, build_config, suggest_key

# Compatibility aliases of the original (SPEC §10.1): read only when the
# canonical variable is unset. Each maps the alias's text to the key's text.


def _all_interfaces(text: str) -> str:
    """TASKS_HTTP_ADDR: ``:7243`` (or ``7243``) means all interfaces."""
    text = text.strip()
    if text.isdigit():
        return f"0.0.0.0:{text}"
    if text.startswith(":"):
        return "0.0.0.0" + text
    return text


def _zap_port(text: str) -> str:
    text = text.strip()
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise ValueError(f"expected a port number 0-65535, got {text!r}")
    return f"0.0.0.0:{text}"


def _same(text: str) -> str:
    return text


_ALIASES: dict[str, tuple[str, Callable[[str], str]]] = {
    "http": ("TASKS_HTTP_ADDR", _all_interfaces),
    "zap": ("TASKS_ZAP_PORT", _zap_port),
    "data_dir": ("TASKS_DATA_DIR", _same),
    "default_namespace": ("TASKS_NAMESPACE", _same),
    "auth.require_identity": ("TASKSD_REQUIRE_IDENTITY", _same),
    "auth.jwks_url": ("TASKSD_JWKS_URL", _same),
    "auth.issuer": ("TASKSD_JWT_ISSUER", _same),
    "auth.audience": ("TASKSD_JWT_AUDIENCE", _same),
}
for _k in KEYS:
    if _k.startswith("settings."):
        # settings.namespace_write_disabled -> TASKSD_NAMESPACE_WRITE_DISABLED,
        # settings.worker_heartbeats_enabled -> TASKSD_WORKER_HEARTBEATS_ENABLED, ...
        _ALIASES[_k] = (ENV_PREFIX + _k.split(".", 1)[1].upper(), _same)



def _flatten(doc: Any, origin: str) -> Layer:
    """Validate a YAML document / mapping and flatten it to dotted keys.

    Accepts nested groups (``raft: {election_timeout: 500ms}``) and dotted keys
    (``raft.election_timeout: 500ms``), but not the same key twice.
    """
    if doc is None:
        return {}
    if not isinstance(doc, Mapping):
        raise ConfigError(
            f"{origin}: the top level must be a mapping of keys (e.g. 'http: 127.0.0.1:7243'), "
            f"got {type(doc).__name__}"
        )
    layer: Layer = {}

    def put(key: str, value: Any) -> None:
        if key not in KEYS:
            raise ConfigError(f"{origin}: unknown key {key!r}{suggest_key(key)}", key)
        if key in layer:
            raise ConfigError(f"{origin}: key {key!r} is given twice", key)
        layer[key] = (value, origin)

    for name, value in doc.items():
        if not isinstance(name, str):
            raise ConfigError(f"{origin}: key {name!r} is not a string")
        if name in GROUPS:
            if value is None:
                continue
            if not isinstance(value, Mapping):
                example = dataclasses.fields(GROUPS[name])[0].name
                raise ConfigError(
                    f"{origin}: {name!r} is a group of keys and needs a mapping, "
                    f"e.g. '{name}: {{{example}: ...}}'",
                    name,
                )
            for sub, sub_value in value.items():
                if not isinstance(sub, str):
                    raise ConfigError(f"{origin}: key {name}.{sub!r} is not a string")
                put(f"{name}.{sub}", sub_value)
        else:
            put(name, value)
    return layer


def _read_yaml(path: str, origin: str) -> Layer:
    import yaml  # imported here: only a node with a config file needs it

    try:
        with open(path, encoding="utf-8") as fh:
            doc = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path} (from {origin})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path} (from {origin}): {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path}: invalid YAML: {exc}") from None
    return _flatten(doc, f"config file {path}")


def _env_layer(env: Mapping[str, str]) -> Layer:
    """Canonical TASKSD_* variables, then aliases for keys still unset.

    An empty variable counts as unset, as in the client (SPEC §2.1), so that a
    blank ``TASKSD_X=`` in a compose file does not override the YAML.
    """
    layer: Layer = {}
    for key, spec in KEYS.items():
        value = env.get(spec.env)
        if value is not None and value.strip() != "":
            layer[key] = (value, f"env {spec.env}")
            continue
        alias = _ALIASES.get(key)
        if alias is None:
            continue
        name, transform = alias
        value = env.get(name)
        if value is None or value.strip() == "":
            continue
        try:
            layer[key] = (transform(value), f"env {name}")
        except ValueError as exc:
            raise ConfigError(f"invalid value for {key} (env {name}): {value!r}: {exc}", key) from None
    return layer


# ---------------------------------------------------------------- public API


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises ConfigError instead of exiting, so that
    callers (tasksd, embed, tests) decide what a usage error does."""

    def error(self, message: str) -> Any:  # type: ignore[override]
        raise ConfigError(message)


_EPILOG = """\
Sources, highest first: flag > environment > YAML file (--config or
TASKSD_CONFIG) > default. Each key KEY has the flag --KEY (dots and
underscores as dashes) and the variable TASKSD_KEY (upper case, dots as
underscores); e.g. raft.election_timeout: --raft-election-timeout,
TASKSD_RAFT_ELECTION_TIMEOUT. In YAML, nest groups or use dotted keys:

  raft:
    election_timeout: 500ms
  auth.require_identity: true

Formats: durations 500ms, 5s, 1h30m (no days); sizes bytes or 4MiB, 1GiB;
booleans 1/true/yes/on, 0/false/no/off; lists comma-separated.

Examples:
  tasksd serve --data-dir /var/lib/tasks --http 0.0.0.0:7243
  tasksd serve --config node.yaml --node-id n1 --replicator raft \\
      --cluster-secret-file /etc/tasks/cluster.secret
  TASKSD_LOG_LEVEL=debug tasksd serve --peers n1=10.0.0.1:7300,n2=10.0.0.2:7300
"""


def build_arg_parser(prog: str = "tasksd serve") -> argparse.ArgumentParser:
    """The ``serve`` flag parser: one flag per key, help showing default and env.

    Flags default to "not given" (argparse.SUPPRESS), so that only flags the
    user typed override the lower layers. Boolean flags may be given bare
    (``--auth-require-identity``) or with a value.
    """
    parser = _Parser(
        prog=prog,
        usage="%(prog)s [--config PATH] [--KEY VALUE ...]",
        description="Run a Hanzo Tasks node. Every key below can also be set in the\n"
        "YAML file or the environment (see the end of this help).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        exit_on_error=False,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument(
        "--config", metavar="PATH", help=f"YAML config file (env {CONFIG_ENV})"
    )
    sections: dict[str, argparse._ArgumentGroup] = {"": parser.add_argument_group("node")}
    for name in GROUPS:
        group_help = next(f.metadata["help"] for f in dataclasses.fields(Config) if f.name == name)
        sections[name] = parser.add_argument_group(f"{name}.*", group_help)
    for key, spec in KEYS.items():
        section = sections[key.split(".")[0] if "." in key else ""]
        shown = "unset" if spec.shown is None else spec.shown
        if isinstance(shown, bool):
            shown = str(shown).lower()
        text = f"{spec.help}. Default: {shown}. Env {spec.env}"
        alias = _ALIASES.get(key)
        if alias:
            text += f" (or {alias[0]})"
        kwargs: dict[str, Any] = {"dest": key, "metavar": spec.kind.metavar, "help": text.replace("%", "%%")}
        if isinstance(spec.kind, Bool):
            kwargs.update(nargs="?", const="true")
        section.add_argument(spec.flag, **kwargs)
    return parser


def load_config(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Config:
    """Build the node's Config from ``serve`` arguments, the environment and the
    YAML file they name. ``env`` defaults to ``os.environ``. Raises ConfigError
    (the caller exits 2); ``--help`` prints and raises SystemExit(0) as usual."""
    environ: Mapping[str, str] = os.environ if env is None else env
    try:
        parsed = vars(build_arg_parser().parse_args(list(argv)))
    except argparse.ArgumentError as exc:  # exit_on_error=False raises these
        raise ConfigError(str(exc)) from None
    layers: list[Layer] = []
    path = parsed.pop("config", None)
    origin = "--config"
    if path is None:
        path = environ.get(CONFIG_ENV) or None
        origin = f"env {CONFIG_ENV}"
    if path is not None:
        if not path.strip():
            raise ConfigError("--config needs a file path")
        layers.append(_read_yaml(path, origin))
    layers.append(_env_layer(environ))
    layers.append({key: (value, f"flag {KEYS[key].flag}") for key, value in parsed.items()})
    return build_config(layers)


def config_from_mapping(values: Mapping[str, Any]) -> Config:
    """A Config from a mapping, for embedded use (``tasks.embed(config=...)``).

    Keys are dotted names or nested group dicts; values are validated exactly
    like YAML values. The environment is not consulted.
    """
    return build_config([_flatten(values, "config mapping")])
