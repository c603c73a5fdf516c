"""Node configuration for ``tasksd`` (SPEC §10.1).

One typed, frozen tree (:class:`Config`) built from four layers, highest first:

    flag  >  environment  >  YAML file (--config PATH or TASKSD_CONFIG)  >  default

Every key is declared exactly once, as a dataclass field carrying its kind, its
default (written the way a user would write it: ``"500ms"``, ``"4MiB"``) and its
help text. The flag parser, the environment lookup, the YAML validation, the
``--help`` output and the dataclass defaults are all derived from that one
declaration, so they cannot drift apart.

Units inside the tree: durations are ``int`` milliseconds, sizes are ``int``
bytes, addresses are ``"host:port"`` strings (IPv6 hosts in brackets), optional
values are ``None`` when unset.

Every bad input raises :class:`ConfigError` with a message that names the key
and where the value came from (flag, env variable or file); the CLI turns it
into exit code 2. Secret files are only checked for being configured here; the
code that uses them reads and checks their contents.
"""

from hanzo_tasks.cluster.config.kinds import ConfigError, Peer, join_host_port, split_host_port
from hanzo_tasks.cluster.config.sources import build_arg_parser, config_from_mapping, load_config
from hanzo_tasks.cluster.config.tree import (
    AuthConfig,
    Config,
    LimitsConfig,
    ListenersConfig,
    MetricsConfig,
    MigrationConfig,
    RaftConfig,
    RetentionConfig,
    SettingsConfig,
    SseConfig,
    StorageConfig,
    TimeoutsConfig,
    TlsConfig,
    env_name,
    flag_name,
    keys,
)

__all__ = [
    "AuthConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "ListenersConfig",
    "MetricsConfig",
    "MigrationConfig",
    "Peer",
    "RaftConfig",
    "RetentionConfig",
    "SettingsConfig",
    "SseConfig",
    "StorageConfig",
    "TimeoutsConfig",
    "TlsConfig",
    "build_arg_parser",
    "config_from_mapping",
    "env_name",
    "flag_name",
    "join_host_port",
    "keys",
    "load_config",
    "split_host_port",
]
