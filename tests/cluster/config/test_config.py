"""Tests of cluster.config: sources and precedence, conversions, aliases and the
errors a bad configuration must produce (SPEC §10.1)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from hanzo_tasks.cluster.config import (
    Config,
    ConfigError,
    Peer,
    build_arg_parser,
    config_from_mapping,
    env_name,
    flag_name,
    keys,
    load_config,
    split_host_port,
)
from hanzo_tasks.cluster.config import tree as config_mod
from hypothesis import given
from hypothesis import strategies as st

_REAL_HOSTNAME = config_mod._hostname


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make hostname-derived defaults predictable."""
    monkeypatch.setattr(config_mod, "_hostname", lambda: "box1.example.com")


def write_yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "tasksd.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def load(*argv: str, **env: str) -> Config:
    return load_config(list(argv), env)


def error_of(*argv: str, **env: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(*argv, **env)
    return str(info.value)


# ---------------------------------------------------------------- defaults


def test_defaults_of_every_key() -> None:
    cfg = load()
    assert cfg.node_id == "box1"
    assert cfg.data_dir == "./tasks-data"
    assert (cfg.http, cfg.zap, cfg.peer) == ("127.0.0.1:7243", "127.0.0.1:9999", "127.0.0.1:7300")
    assert (cfg.advertise_http, cfg.advertise_zap, cfg.advertise_peer) == (
        "127.0.0.1:7243",
        "127.0.0.1:9999",
        "127.0.0.1:7300",
    )
    assert cfg.peers == ()
    assert cfg.replicator == "local"
    assert cfg.replication_factor == 3
    assert cfg.partitions == 16
    assert cfg.seed == "tasks"
    assert cfg.default_namespace == "default"
    assert cfg.region == "embedded"
    assert cfg.cluster_secret_file is None
    assert cfg.durability == "sync"
    assert cfg.ui_dir is None
    assert (cfg.log_level, cfg.log_format) == ("info", "text")

    assert cfg.raft == config_mod.RaftConfig(
        election_timeout=500,
        heartbeat_interval=100,
        idle_after=30_000,
        idle_heartbeat_interval=3_000,
        propose_timeout=5_000,
        snapshot_every=10_000,
    )
    a = cfg.auth
    assert a.require_identity is False
    assert (a.hs256_secret_file, a.jwks_file, a.jwks_url, a.issuer, a.audience) == (None,) * 5
    assert (a.jwks_ttl, a.jwks_max_stale, a.leeway) == (300_000, 3_600_000, 60_000)
    assert (a.org_claim, a.role_claim, a.default_role) == ("owner", "tasks_role", "owner")
    lim = cfg.limits
    assert (lim.max_body, lim.max_frame, lim.max_payload) == (4 << 20, 16 << 20, 2 << 20)
    assert lim.rate_per_org == 0
    assert (lim.max_history_events, lim.max_batch_size, lim.max_zap_connections) == (
        50_000,
        100_000,
        10_000,
    )
    t = cfg.timeouts
    assert (t.cancel_ack, t.push_ack, t.activity_start_to_close) == (60_000, 10_000, 600_000)
    assert (t.query_default, t.query_max) == (5_000, 30_000)
    assert cfg.retention.sweep_interval == 3_600_000
    assert (cfg.migration.max_fence, cfg.migration.fence_wait) == (5_000, 5_000)
    assert (cfg.sse.buffer_events, cfg.sse.keepalive) == (10_000, 15_000)
    s = cfg.storage
    assert (s.map_size, s.map_size_max, s.reserve_disk) == (64 << 20, 32 << 30, 1 << 30)
    assert cfg.metrics.max_task_queue_series == 100
    st_ = cfg.settings
    assert (
        st_.namespace_write_disabled,
        st_.advanced_visibility_enabled,
        st_.worker_heartbeats_enabled,
        st_.codec_endpoints_enabled,
        st_.multi_cluster_enabled,
    ) == (False, True, True, False, False)
    assert dict(cfg.sources) == {}


def test_plain_constructor_equals_loaded_defaults() -> None:
    assert Config() == load()


def test_config_is_frozen() -> None:
    cfg = load()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.http = "x:1"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.raft.election_timeout = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("hostname", "node_id"),
    [
        ("box1.example.com", "box1"),
        ("my_host!x.lan", "my_host-x"),
        ("-lead.example", "lead"),
        ("x" * 80, "x" * 64),
        ("", "localhost"),
        ("!!!", "node"),
    ],
)
def test_default_node_id_is_sanitised_short_hostname(
    monkeypatch: pytest.MonkeyPatch, hostname: str, node_id: str
) -> None:
    monkeypatch.setattr(config_mod, "_hostname", _REAL_HOSTNAME)
    monkeypatch.setattr(config_mod.socket, "gethostname", lambda: hostname)
    assert load().node_id == node_id


def test_advertise_replaces_wildcard_hosts() -> None:
    cfg = load("--http", "0.0.0.0:80", "--zap", "[::]:9", "--peer", "10.1.2.3:7300")
    assert cfg.advertise_http == "box1.example.com:80"
    assert cfg.advertise_zap == "box1.example.com:9"
    assert cfg.advertise_peer == "10.1.2.3:7300"
    explicit = load("--http", "0.0.0.0:80", "--advertise-http", "svc.internal:443")
    assert explicit.advertise_http == "svc.internal:443"


# -------------------------------------------------------------- precedence


def test_precedence_flag_over_env_over_yaml_over_default(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "seed: from-yaml\nregion: yaml-region\ndata_dir: /yaml\nraft:\n  election_timeout: 900ms\n",
    )
    env = {
        "TASKSD_CONFIG": path,
        "TASKSD_REGION": "env-region",
        "TASKSD_DATA_DIR": "/env",
        "TASKSD_RAFT_ELECTION_TIMEOUT": "2s",
    }
    cfg = load_config(["--data-dir", "/flag", "--raft-election-timeout", "3s"], env)
    assert cfg.seed == "from-yaml"  # yaml > default
    assert cfg.region == "env-region"  # env > yaml
    assert cfg.data_dir == "/flag"  # flag > env > yaml
    assert cfg.raft.election_timeout == 3000
    assert cfg.log_level == "info"  # default
    assert cfg.sources["seed"] == f"config file {path}"
    assert cfg.sources["region"] == "env TASKSD_REGION"
    assert cfg.sources["data_dir"] == "flag --data-dir"
    assert "log_level" not in cfg.sources


def test_config_flag_beats_tasksd_config_env(tmp_path: Path) -> None:
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("seed: a\n")
    b.write_text("seed: b\n")
    assert load_config(["--config", str(a)], {"TASKSD_CONFIG": str(b)}).seed == "a"
    assert load_config([], {"TASKSD_CONFIG": str(b)}).seed == "b"


def test_empty_env_variable_counts_as_unset(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "region: yaml\n")
    cfg = load_config(["--config", path], {"TASKSD_REGION": "", "TASKS_DATA_DIR": ""})
    assert cfg.region == "yaml"
    assert cfg.data_dir == "./tasks-data"


def test_unrelated_environment_is_ignored() -> None:
    cfg = load_config([], {"TASKSD_SOMETHING_ELSE": "x", "PATH": "/bin", "HOME": "/root"})
    assert cfg == Config()


def test_os_environ_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSD_SEED", "from-os")
    assert load_config([]).seed == "from-os"


# -------------------------------------------------------------- conversions


@pytest.mark.parametrize(
    ("text", "ms"),
    [("500ms", 500), ("1.5s", 1500), ("1h30m", 5_400_000), ("2m", 120_000), ("1500us", 1)],
)
def test_durations(text: str, ms: int) -> None:
    assert load("--raft-propose-timeout", text).raft.propose_timeout == ms
    assert load(TASKSD_RAFT_PROPOSE_TIMEOUT=text).raft.propose_timeout == ms


@pytest.mark.parametrize("bad", ["5", "1d", "abc", "-1s", "0", " ", "5 s"])
def test_bad_durations_name_the_key(bad: str) -> None:
    message = error_of(f"--timeouts-push-ack={bad}")
    assert "timeouts.push_ack" in message
    assert "--timeouts-push-ack" in message


def test_leeway_may_be_zero() -> None:
    assert load("--auth-leeway", "0").auth.leeway == 0
    assert load("--auth-leeway", "0s").auth.leeway == 0


def test_yaml_duration_must_be_a_string_with_unit(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "raft:\n  election_timeout: 500\n")
    message = error_of("--config", path)
    assert "raft.election_timeout" in message and "500ms" in message


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("4MiB", 4 << 20),
        ("1 GiB", 1 << 30),
        ("512KiB", 512 << 10),
        ("7B", 7),
        ("2mib", 2 << 20),
    ],
)
def test_sizes(text: str, size: int) -> None:
    assert load("--limits-max-body", text).limits.max_body == size
    assert load(TASKSD_STORAGE_RESERVE_DISK=text).storage.reserve_disk == size


@pytest.mark.parametrize("bad", ["4MB", "1.5MiB", "-1", "lots", "", "0"])
def test_bad_sizes(bad: str) -> None:
    assert "limits.max_body" in error_of("--limits-max-body", bad)


@given(st.integers(min_value=1, max_value=1 << 20), st.sampled_from(["", "B", "KiB", "MiB", "GiB"]))
def test_size_units_multiply(n: int, unit: str) -> None:
    factor = {"": 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}[unit]
    assert config_from_mapping({"storage.map_size_max": f"{n}{unit}", "storage.map_size": 1}).storage.map_size_max == n * factor


def test_yaml_native_types(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        """
limits:
  max_body: 1048576
  rate_per_org: 2.5
partitions: 32
auth:
  require_identity: yes
  jwks_file: /etc/jwks.json
settings:
  multi_cluster_enabled: true
peers:
  - {id: n1, peer: "10.0.0.1:7300", http: "10.0.0.1:7243"}
  - id: n2
    peer: 10.0.0.2:7300
""",
    )
    cfg = load("--config", path)
    assert cfg.limits.max_body == 1 << 20
    assert cfg.limits.rate_per_org == 2.5
    assert cfg.partitions == 32
    assert cfg.auth.require_identity is True
    assert cfg.settings.multi_cluster_enabled is True
    assert cfg.peers == (
        Peer("n1", "10.0.0.1:7300", http="10.0.0.1:7243"),
        Peer("n2", "10.0.0.2:7300"),
    )


@pytest.mark.parametrize("text", ["1", "true", "TRUE", "yes", "On"])
def test_booleans_true(text: str) -> None:
    assert load("--settings-codec-endpoints-enabled", text).settings.codec_endpoints_enabled is True
    assert load(TASKSD_SETTINGS_CODEC_ENDPOINTS_ENABLED=text).settings.codec_endpoints_enabled


@pytest.mark.parametrize("text", ["0", "false", "No", "off"])
def test_booleans_false(text: str) -> None:
    cfg = load("--settings-worker-heartbeats-enabled", text)
    assert cfg.settings.worker_heartbeats_enabled is False


def test_bare_boolean_flag_means_true() -> None:
    cfg = load("--settings-namespace-write-disabled", "--seed", "s")
    assert cfg.settings.namespace_write_disabled is True and cfg.seed == "s"


def test_bad_boolean() -> None:
    assert "settings.multi_cluster_enabled" in error_of(TASKSD_SETTINGS_MULTI_CLUSTER_ENABLED="maybe")


@pytest.mark.parametrize(("value", "ok"), [("1", True), ("4096", True), ("0", False), ("4097", False), ("x", False)])
def test_partitions_range(value: str, ok: bool) -> None:
    if ok:
        assert load("--partitions", value).partitions == int(value)
    else:
        assert "partitions" in error_of("--partitions", value)


def test_replication_factor_at_least_one() -> None:
    assert load("--replication-factor", "1").replication_factor == 1
    assert "replication_factor" in error_of("--replication-factor", "0")


@pytest.mark.parametrize(
    ("flag", "value", "key"),
    [
        ("--replicator", "paxos", "replicator"),
        ("--durability", "maybe", "durability"),
        ("--log-level", "trace", "log_level"),
        ("--log-format", "xml", "log_format"),
        ("--auth-default-role", "root", "auth.default_role"),
    ],
)
def test_choices_are_checked(flag: str, value: str, key: str) -> None:
    message = error_of(flag, value)
    assert key in message and value in message


def test_choices_are_case_insensitive() -> None:
    cfg = load("--log-level", "DEBUG", "--durability", "NoSync", "--log-format", "json")
    assert (cfg.log_level, cfg.durability, cfg.log_format) == ("debug", "nosync", "json")


@pytest.mark.parametrize(
    ("addr", "normalised"),
    [
        ("127.0.0.1:0", "127.0.0.1:0"),
        ("localhost:65535", "localhost:65535"),
        ("[::1]:7243", "[::1]:7243"),
        (" host:1 ", "host:1"),
    ],
)
def test_addresses(addr: str, normalised: str) -> None:
    assert load("--zap", addr).zap == normalised


@pytest.mark.parametrize("bad", ["7243", ":7243", "host:65536", "host:-1", "host:", "::1:80", "a b:1", "[::1]80"])
def test_bad_addresses(bad: str) -> None:
    assert "zap" in error_of("--zap", bad)


def test_split_host_port() -> None:
    assert split_host_port("[::]:9") == ("::", 9)
    assert split_host_port("a.b:1") == ("a.b", 1)
    with pytest.raises(ValueError):
        split_host_port("nohost")


def test_peers_csv_from_env_and_flag() -> None:
    cfg = load(TASKSD_PEERS="n1=10.0.0.1:7300, n2=[fd00::2]:7300")
    assert cfg.peers == (Peer("n1", "10.0.0.1:7300"), Peer("n2", "[fd00::2]:7300"))
    assert load("--peers", "a=h:1").peers == (Peer("a", "h:1"),)
    assert load("--peers", "").peers == ()


def test_peers_yaml_mapping_form() -> None:
    cfg = config_from_mapping({"peers": {"n1": "h1:7300", "n2": {"peer": "h2:7300", "zap": "h2:9999"}}})
    assert cfg.peers == (Peer("n1", "h1:7300"), Peer("n2", "h2:7300", zap="h2:9999"))


@pytest.mark.parametrize(
    "bad",
    [
        "n1",  # no address
        "bad id=h:1",  # invalid node id
        "-x=h:1",
        "n1=h:99999",
        "n1=h:1,n1=h:2",  # duplicate
    ],
)
def test_bad_peers(bad: str) -> None:
    assert "peers" in error_of("--peers", bad)


def test_peer_maps_reject_unknown_fields() -> None:
    with pytest.raises(ConfigError, match="bogus"):
        config_from_mapping({"peers": [{"id": "n1", "peer": "h:1", "bogus": 1}]})
    with pytest.raises(ConfigError, match="peer"):
        config_from_mapping({"peers": [{"id": "n1"}]})


def test_node_id_pattern_is_enforced() -> None:
    assert load("--node-id", "n1.a_b-c").node_id == "n1.a_b-c"
    for bad in ("-n1", "n 1", "x" * 65, "ü"):
        assert "node_id" in error_of(f"--node-id={bad}")


def test_default_namespace_is_validated() -> None:
    assert load("--default-namespace", "prod").default_namespace == "prod"
    assert "default_namespace" in error_of("--default-namespace", "a/b")
    assert "default_namespace" in error_of("--default-namespace", "..")


def test_jwks_url_must_be_http() -> None:
    assert "auth.jwks_url" in error_of("--auth-jwks-url", "ftp://x/jwks")


def test_optional_paths_may_be_cleared() -> None:
    cfg = load("--ui-dir", "/srv/ui")
    assert cfg.ui_dir == "/srv/ui"
    assert load("--ui-dir", "").ui_dir is None


def test_rate_per_org_accepts_numbers() -> None:
    assert load("--limits-rate-per-org", "100").limits.rate_per_org == 100
    assert "limits.rate_per_org" in error_of("--limits-rate-per-org", "-1")
    assert "limits.rate_per_org" in error_of("--limits-rate-per-org", "nan")


# ------------------------------------------------------------------ aliases


def test_alias_http_addr_colon_port_means_all_interfaces() -> None:
    cfg = load(TASKS_HTTP_ADDR=":7243")
    assert cfg.http == "0.0.0.0:7243"
    assert cfg.advertise_http == "box1.example.com:7243"
    assert load(TASKS_HTTP_ADDR="10.0.0.5:80").http == "10.0.0.5:80"


def test_alias_zap_port() -> None:
    assert load(TASKS_ZAP_PORT="9998").zap == "0.0.0.0:9998"
    message = error_of(TASKS_ZAP_PORT="nine")
    assert "TASKS_ZAP_PORT" in message and "zap" in message


@pytest.mark.parametrize(
    ("alias", "value", "key", "expected"),
    [
        ("TASKS_DATA_DIR", "/data", "data_dir", "/data"),
        ("TASKS_NAMESPACE", "prod", "default_namespace", "prod"),
        ("TASKSD_JWKS_URL", "https://id/jwks", "auth.jwks_url", "https://id/jwks"),
        ("TASKSD_JWT_ISSUER", "https://id", "auth.issuer", "https://id"),
        ("TASKSD_JWT_AUDIENCE", "tasks", "auth.audience", "tasks"),
        ("TASKSD_NAMESPACE_WRITE_DISABLED", "true", "settings.namespace_write_disabled", True),
        ("TASKSD_ADVANCED_VISIBILITY_ENABLED", "false", "settings.advanced_visibility_enabled", False),
        ("TASKSD_WORKER_HEARTBEATS_ENABLED", "off", "settings.worker_heartbeats_enabled", False),
        ("TASKSD_CODEC_ENDPOINTS_ENABLED", "1", "settings.codec_endpoints_enabled", True),
        ("TASKSD_MULTI_CLUSTER_ENABLED", "yes", "settings.multi_cluster_enabled", True),
    ],
)
def test_aliases(alias: str, value: str, key: str, expected: Any) -> None:
    cfg = load_config([], {alias: value})
    assert cfg.get(key) == expected
    assert cfg.sources[key] == f"env {alias}"


def test_require_identity_alias() -> None:
    cfg = load_config([], {"TASKSD_REQUIRE_IDENTITY": "1", "TASKSD_AUTH_HS256_SECRET_FILE": "/s"})
    assert cfg.auth.require_identity is True


def test_canonical_variable_beats_alias() -> None:
    env = {
        "TASKSD_HTTP": "127.0.0.1:1",
        "TASKS_HTTP_ADDR": ":2",
        "TASKSD_DATA_DIR": "/canon",
        "TASKS_DATA_DIR": "/alias",
        "TASKSD_SETTINGS_MULTI_CLUSTER_ENABLED": "false",
        "TASKSD_MULTI_CLUSTER_ENABLED": "true",
    }
    cfg = load_config([], env)
    assert (cfg.http, cfg.data_dir, cfg.settings.multi_cluster_enabled) == (
        "127.0.0.1:1",
        "/canon",
        False,
    )


def test_alias_beats_yaml_and_flag_beats_alias(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "data_dir: /yaml\n")
    assert load_config(["--config", path], {"TASKS_DATA_DIR": "/alias"}).data_dir == "/alias"
    assert load_config(["--data-dir", "/flag"], {"TASKS_DATA_DIR": "/alias"}).data_dir == "/flag"


# ------------------------------------------------------------------- YAML


def test_nested_and_dotted_yaml_keys(tmp_path: Path) -> None:
    path = write_yaml(
        tmp_path,
        "raft:\n  election_timeout: 800ms\nraft.heartbeat_interval: 200ms\n"
        "auth.require_identity: on\nauth:\n  hs256_secret_file: /k\n"
        "storage: {map_size: 1MiB}\n",
    )
    cfg = load("--config", path)
    assert cfg.raft.election_timeout == 800
    assert cfg.raft.heartbeat_interval == 200
    assert cfg.auth.require_identity is True
    assert cfg.auth.hs256_secret_file == "/k"
    assert cfg.storage.map_size == 1 << 20


def test_empty_yaml_and_empty_group_are_fine(tmp_path: Path) -> None:
    assert load("--config", write_yaml(tmp_path, "")) == Config()
    assert load("--config", write_yaml(tmp_path, "raft:\n")) == Config()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("bogus: 1\n", "bogus"),
        ("raft:\n  bogus: 1s\n", "raft.bogus"),
        ("raft.bogus: 1s\n", "raft.bogus"),
        ("nosuchgroup.x: 1\n", "nosuchgroup.x"),
        ("raft:\n  election_timeout:\n    deeper: 1\n", "raft.election_timeout"),
    ],
)
def test_unknown_yaml_keys_are_named(tmp_path: Path, text: str, named: str) -> None:
    assert named in error_of("--config", write_yaml(tmp_path, text))


def test_unknown_key_suggests_a_close_one(tmp_path: Path) -> None:
    message = error_of("--config", write_yaml(tmp_path, "raft:\n  election_timout: 1s\n"))
    assert "raft.election_timout" in message and "raft.election_timeout" in message


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("- a\n- b\n", "top level must be a mapping"),
        ("just a string\n", "top level must be a mapping"),
        ("raft: 5\n", "'raft' is a group"),
        ("raft:\n  election_timeout: 1s\nraft.election_timeout: 2s\n", "given twice"),
        ("http: [1, 2]\n", "http"),
        ("seed: [unclosed\n", "invalid YAML"),
        ("1: x\n", "not a string"),
    ],
)
def test_bad_yaml_documents(tmp_path: Path, text: str, fragment: str) -> None:
    assert fragment in error_of("--config", write_yaml(tmp_path, text))


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert missing in error_of("--config", missing)
    assert "TASKSD_CONFIG" in error_of(TASKSD_CONFIG=missing)


def test_yaml_error_names_the_file(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, "partitions: 0\n")
    message = error_of("--config", path)
    assert path in message and "partitions" in message


# ------------------------------------------------------------------- flags


def test_unknown_flag_is_named() -> None:
    assert "--bogus" in error_of("--bogus", "1")
    assert "--raft-election" in error_of("--raft-election", "1s")  # no abbreviations
    assert "stray" in error_of("stray")


def test_flag_without_value() -> None:
    assert "--http" in error_of("--http")


def test_flag_equals_syntax() -> None:
    assert load("--http=127.0.0.1:1").http == "127.0.0.1:1"


def test_help_teaches_every_key_with_default_and_env() -> None:
    text = build_arg_parser().format_help()
    for key in keys():
        assert flag_name(key) in text, key
        assert env_name(key) in text, key
    assert "Default: 500ms" in text and "Default: 4MiB" in text
    assert "--config" in text and "TASKSD_CONFIG" in text


def test_help_exits_zero() -> None:
    with pytest.raises(SystemExit) as info:
        load("--help")
    assert info.value.code == 0


def test_env_and_flag_names() -> None:
    assert env_name("auth.jwks_url") == "TASKSD_AUTH_JWKS_URL"
    assert flag_name("auth.jwks_url") == "--auth-jwks-url"
    assert len({env_name(k) for k in keys()}) == len(keys())
    assert len({flag_name(k) for k in keys()}) == len(keys())


# ----------------------------------------------------------- startup checks


def test_raft_requires_cluster_secret_file() -> None:
    message = error_of("--replicator", "raft")
    assert "cluster_secret_file" in message
    cfg = load("--replicator", "raft", "--cluster-secret-file", "/etc/secret")
    assert cfg.replicator == "raft" and cfg.cluster_secret_file == "/etc/secret"


def test_require_identity_needs_a_key_source() -> None:
    message = error_of("--auth-require-identity")
    assert "auth.require_identity" in message
    for flag in ("--auth-hs256-secret-file", "--auth-jwks-file"):
        assert load("--auth-require-identity", flag, "/k").auth.require_identity
    assert load("--auth-require-identity", "true", "--auth-jwks-url", "https://id/jwks")


def test_secret_files_are_not_read(tmp_path: Path) -> None:
    missing = str(tmp_path / "does-not-exist")
    cfg = load("--replicator", "raft", "--cluster-secret-file", missing)
    assert cfg.cluster_secret_file == missing


def test_cross_key_checks() -> None:
    assert "raft.heartbeat_interval" in error_of("--raft-heartbeat-interval", "600ms")
    assert "timeouts.query_default" in error_of("--timeouts-query-default", "40s")
    assert "storage.map_size" in error_of("--storage-map-size", "64GiB")


# ------------------------------------------------------- mapping, get, replace


def test_config_from_mapping_nested_and_dotted() -> None:
    cfg = config_from_mapping(
        {"http": "127.0.0.1:0", "raft": {"propose_timeout": "2s"}, "auth.leeway": "5s", "partitions": 4}
    )
    assert cfg.http == "127.0.0.1:0"
    assert cfg.raft.propose_timeout == 2000
    assert cfg.auth.leeway == 5000
    assert cfg.partitions == 4
    with pytest.raises(ConfigError, match="raft.nope"):
        config_from_mapping({"raft": {"nope": 1}})
    with pytest.raises(ConfigError, match="partitions"):
        config_from_mapping({"partitions": "many"})


def test_config_from_mapping_ignores_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TASKSD_SEED", "env")
    assert config_from_mapping({}).seed == "tasks"


def test_get() -> None:
    cfg = load("--raft-election-timeout", "1s")
    assert cfg.get("raft.election_timeout") == 1000
    assert cfg.get("http") == "127.0.0.1:7243"
    with pytest.raises(KeyError):
        cfg.get("raft.nope")
    assert set(cfg.as_dict()) == set(keys())


def test_replace() -> None:
    cfg = load("--seed", "s1")
    new = cfg.replace(**{"raft.election_timeout": "2s"}, http="0.0.0.0:1", limits__max_body=10)
    assert new.raft.election_timeout == 2000
    assert new.limits.max_body == 10
    assert new.seed == "s1"
    assert new.advertise_http == "box1.example.com:1"  # follows the new listen address
    assert cfg.raft.election_timeout == 500  # the original is unchanged
    assert cfg.replace(**{"raft.election_timeout": 700}).raft.election_timeout == 700  # typed ms
    with pytest.raises(ConfigError, match="nope"):
        cfg.replace(nope=1)
    with pytest.raises(ConfigError, match="cluster_secret_file"):
        cfg.replace(replicator="raft")


def test_every_key_is_a_dataclass_field() -> None:
    cfg = Config()
    for key in keys():
        cfg.get(key)  # raises if a key has no attribute
    groups = [f.name for f in dataclasses.fields(Config) if "group" in f.metadata]
    assert groups == [
        "raft",
        "auth",
        "limits",
        "listeners",
        "timeouts",
        "retention",
        "migration",
        "sse",
        "storage",
        "metrics",
        "settings",
        "tls",
    ]
