"""The Helm chart in helm/tasks, rendered by Helm v4's own engine.

What is checked here is what `helm install` would do or refuse: lint, schema
validation of values, Kubernetes schema validation of every manifest (strict:
unknown fields are errors), and the properties a Raft cluster on Kubernetes
depends on (stable ids, peers reachable before ready, one pod down at a time).
tests/helm/test_chart_forms_cluster.py runs the rendered pods.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from hanzo_tasks.cluster.config import ConfigError, keys, load_config
from kubernetes_validate import utils as kv_utils
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.helm.chart_support import (
    CHART_DIR,
    NAMESPACE,
    REPO,
    by_name,
    manifest_text,
    manifests,
    objects,
    one,
    render,
)
from tests.helm.pods import expand_vars

# The oldest Kubernetes the chart is checked against, and the newest whose
# schemas the installed kubernetes-validate ships.
KUBE_VERSIONS = ["1.31.0", kv_utils.latest_version()]
BUILT_IN_API_GROUPS = ("v1", "apps/v1", "policy/v1", "networking.k8s.io/v1")

# Every optional branch of the templates switched on at once.
ALL_FEATURES: dict[str, Any] = {
    "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    "podAntiAffinity": "hard",
    "networkPolicy": {"clientFrom": [{"namespaceSelector": {"matchLabels": {"team": "apps"}}}]},
    "imagePullSecrets": [{"name": "registry"}],
    "podAnnotations": {"example.com/owner": "tasks"},
    "podLabels": {"tier": "backend"},
    "extraEnv": [{"name": "TASKSD_LOG_LEVEL", "value": "debug"}],
    "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "tasks", "effect": "NoSchedule"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "topologySpreadConstraints": [{
        "maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "tasks"}},
    }],
    "priorityClassName": "high",
    "persistence": {"size": "20Gi", "storageClassName": "fast-ssd", "annotations": {"a": "b"}},
    "service": {"type": "LoadBalancer", "annotations": {"example.com/lb": "internal"}},
    "serviceAccount": {"annotations": {"example.com/role": "tasks"}},
}

# Keys of tasksd's config that the chart sets itself (per pod or from the
# Secret); values.config must not carry them.
CHART_OWNED_KEYS = {
    "node_id", "node_zone", "data_dir", "http", "zap", "peer", "advertise_http", "advertise_zap",
    "advertise_peer", "peers", "replicator", "cluster_secret_file", "auth.hs256_secret_file",
    # set from the `tls` values (the Secret's files), see tests/helm/test_chart_tls.py
    "tls.cert_file", "tls.key_file", "tls.client_ca_file", "tls.client_auth",
    "tls.peer_cert_file", "tls.peer_key_file", "tls.peer_ca_file",
}


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return manifests(render())


@pytest.fixture(scope="module")
def sts(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "StatefulSet")


def container(sts: dict[str, Any]) -> dict[str, Any]:
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    return c


def node_yaml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["tasksd.yaml"])


# ------------------------------------------------------------------ helm lint


def test_helm_lint_is_clean() -> None:
    """No finding at all, not even the informational ones, in strict mode."""
    report = helm.lint(CHART_DIR, strict=True, kube_version="v1.31.0", namespace=NAMESPACE)
    assert report["errors"] == [] and report["messages"] == [], report


def test_helm_lint_is_clean_with_every_feature_on() -> None:
    report = helm.lint(CHART_DIR, ALL_FEATURES, strict=True, kube_version="v1.31.0")
    assert report["errors"] == [] and report["messages"] == [], report


# ------------------------------------------------------- Kubernetes schemas


def validate_built_in(docs: list[dict[str, Any]], version: str) -> list[str]:
    """Validate every object of a built-in API group; return their kinds."""
    seen = []
    for doc in docs:
        if doc["apiVersion"] not in BUILT_IN_API_GROUPS:
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            where = ".".join(str(p) for p in e.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {e.message}")
        seen.append(doc["kind"])
    return seen


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_default_manifests_are_valid_kubernetes(version: str, docs: list[dict[str, Any]]) -> None:
    kinds = validate_built_in(docs, version)
    assert sorted(kinds) == sorted([
        "ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Secret", "Service", "Service",
        "ServiceAccount", "StatefulSet",
    ])
    assert all(d["apiVersion"] in BUILT_IN_API_GROUPS for d in docs), "a CRD kind is rendered by default"


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_manifests_with_every_feature_are_valid_kubernetes(version: str) -> None:
    docs = manifests(render(ALL_FEATURES))
    validate_built_in(docs, version)


def test_the_validator_rejects_a_broken_manifest(sts: dict[str, Any]) -> None:
    """The schema check above is not vacuous: an unknown field or a wrong
    type in the StatefulSet is an error."""
    broken = copy.deepcopy(sts)
    broken["spec"]["podManagmentPolicy"] = "Parallel"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)
    broken = copy.deepcopy(sts)
    broken["spec"]["replicas"] = "3"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBE_VERSIONS[0], strict=True)


def test_service_monitor_is_off_by_default_and_renders_when_enabled(docs: list[dict[str, Any]]) -> None:
    assert not objects(docs, "ServiceMonitor")
    enabled = manifests(render({"serviceMonitor": {"enabled": True, "interval": "15s"}}))
    sm = one(enabled, "ServiceMonitor")
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "15s"
    # It selects exactly the peers Service (every pod, ready or not), and the
    # port it names exists there.
    selected = [
        s for s in objects(enabled, "Service")
        if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["spec"].get("clusterIP") for s in selected] == ["None"]
    assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
    assert sm["spec"]["namespaceSelector"]["matchNames"] == [NAMESPACE]


# ---------------------------------------------------------- cluster shape


def test_statefulset_gives_three_pods_stable_ids_and_starts_them_together(sts: dict[str, Any]) -> None:
    spec = sts["spec"]
    assert spec["replicas"] == 3
    assert spec["podManagementPolicy"] == "Parallel"
    assert spec["updateStrategy"]["type"] == "RollingUpdate"
    env = {e["name"]: e for e in container(sts)["env"]}
    assert env["TASKSD_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()


def test_peers_list_every_pod_by_its_stable_dns_name(docs: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    """The names Kubernetes gives StatefulSet pods, computed here from the
    StatefulSet and the headless Service, are the ones in the config."""
    headless = by_name(docs, "Service", sts["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert headless["spec"]["selector"].items() <= sts["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container(sts)["ports"]}
    assert ports == {"http": 7243, "zap": 9999, "peer": 7300}
    name = sts["metadata"]["name"]
    dns = [f"{name}-{i}.{headless['metadata']['name']}.{NAMESPACE}.svc.cluster.local" for i in range(3)]
    cfg = node_yaml(docs)
    assert cfg["replicator"] == "raft"
    assert cfg["peers"] == [
        {"id": f"{name}-{i}", "peer": f"{dns[i]}:7300", "http": f"{dns[i]}:7243", "zap": f"{dns[i]}:9999"}
        for i in range(3)
    ]
    assert (cfg["http"], cfg["zap"], cfg["peer"]) == ("0.0.0.0:7243", "0.0.0.0:9999", "0.0.0.0:7300")
    env = {e["name"]: e.get("value") for e in container(sts)["env"]}
    defined = {"TASKSD_NODE_ID": f"{name}-1"}
    assert expand_vars(env["TASKSD_ADVERTISE_PEER"], defined) == f"{dns[1]}:7300"
    assert expand_vars(env["TASKSD_ADVERTISE_HTTP"], defined) == f"{dns[1]}:7243"
    assert expand_vars(env["TASKSD_ADVERTISE_ZAP"], defined) == f"{dns[1]}:9999"


def test_peers_follow_replicas_release_name_and_cluster_domain() -> None:
    docs = manifests(render({"replicas": 5, "clusterDomain": "k8s.example"}, name="jobs"))
    cfg = node_yaml(docs)
    assert [p["id"] for p in cfg["peers"]] == [f"jobs-tasks-{i}" for i in range(5)]
    assert cfg["peers"][4]["peer"] == f"jobs-tasks-4.jobs-tasks-peers.{NAMESPACE}.svc.k8s.example:7300"


def test_rendered_config_is_accepted_by_tasksd(tmp_path: Path, docs: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    """tasksd's own loader reads the ConfigMap and the pod's env as they are
    (an unknown or malformed key would make the node exit 2)."""
    path = tmp_path / "tasksd.yaml"
    path.write_text(one(docs, "ConfigMap")["data"]["tasksd.yaml"])
    env: dict[str, str] = {}
    for item in container(sts)["env"]:
        env[item["name"]] = "tasks-2" if "valueFrom" in item else expand_vars(item["value"], env)
    cfg = load_config(["--config", str(path)], env)
    assert cfg.node_id == "tasks-2"
    assert cfg.replicator == "raft" and cfg.partitions == 16 and cfg.durability == "sync"
    assert cfg.raft.election_timeout == 500 and cfg.raft.heartbeat_interval == 100
    assert cfg.advertise_peer == f"tasks-2.tasks-peers.{NAMESPACE}.svc.cluster.local:7300"
    assert [p.id for p in cfg.peers] == ["tasks-0", "tasks-1", "tasks-2"]
    assert cfg.cluster_secret_file == "/etc/tasks/secrets/cluster.secret"
    assert cfg.auth.require_identity and cfg.auth.hs256_secret_file == "/etc/tasks/secrets/jwt-hs256.key"
    assert cfg.data_dir == "/var/lib/tasks"


def test_values_config_offers_every_tasksd_key_the_chart_does_not_own() -> None:
    """values.schema.json's `config` mirrors cluster/config.py: a key added to
    tasksd shows up here as a failure until the schema learns it."""
    schema = json.loads((CHART_DIR / "values.schema.json").read_text())
    offered = set()
    for key, sub in schema["properties"]["config"]["properties"].items():
        if "properties" in sub:
            offered |= {f"{key}.{name}" for name in sub["properties"]}
        else:
            offered.add(key)
    assert offered.isdisjoint(CHART_OWNED_KEYS)
    assert offered | CHART_OWNED_KEYS == set(keys())


def test_every_default_of_values_config_is_valid_for_tasksd(tmp_path: Path) -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(values["config"]))
    owned = ["--cluster-secret-file", "/x", "--auth-hs256-secret-file", "/k"]
    load_config(["--config", str(path), *owned], {})
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**values["config"], "durability": "fsync"}))
    with pytest.raises(ConfigError):
        load_config(["--config", str(bad), *owned], {})


def test_pods_are_probed_on_healthz_and_readyz(sts: dict[str, Any]) -> None:
    c = container(sts)
    assert c["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["command"] == ["tasksd"]
    assert c["args"] == ["serve", "--config", "/etc/tasks/config/tasksd.yaml"]


def test_pods_run_non_root_on_a_read_only_root_filesystem(sts: dict[str, Any]) -> None:
    pod = sts["spec"]["template"]["spec"]
    c = container(sts)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert mounts["/var/lib/tasks"] == claim["metadata"]["name"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert c["resources"]["requests"] and "cpu" not in c["resources"]["limits"]


def test_pods_prefer_distinct_nodes(sts: dict[str, Any]) -> None:
    (term,) = sts["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    hard = one(manifests(render({"podAntiAffinity": "hard"})), "StatefulSet")
    assert "requiredDuringSchedulingIgnoredDuringExecution" in hard["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    none = one(manifests(render({"podAntiAffinity": "none"})), "StatefulSet")
    assert "affinity" not in none["spec"]["template"]["spec"]


def test_disruption_budget_keeps_a_majority(docs: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"] == sts["spec"]["selector"]


def test_network_policy_opens_the_peer_port_to_the_set_only(docs: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    np = one(docs, "NetworkPolicy")
    assert np["spec"]["podSelector"] == sts["spec"]["selector"]
    assert np["spec"]["policyTypes"] == ["Ingress"]
    peer_rule, client_rule = np["spec"]["ingress"]
    assert [p["port"] for p in peer_rule["ports"]] == [7300]
    assert peer_rule["from"] == [{"podSelector": sts["spec"]["selector"]}]
    assert sorted(p["port"] for p in client_rule["ports"]) == [7243, 9999]
    assert "from" not in client_rule  # any client
    for rule in np["spec"]["ingress"]:  # the peer port is in no other rule
        assert 7300 not in [p["port"] for p in rule["ports"]] or rule is peer_rule


def test_client_service_serves_http_and_zap(docs: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    client = by_name(docs, "Service", sts["metadata"]["name"])
    assert client["spec"]["type"] == "ClusterIP"
    assert {(p["name"], p["port"]) for p in client["spec"]["ports"]} == {("http", 7243), ("zap", 9999)}
    assert not client["spec"].get("publishNotReadyAddresses")


# --------------------------------------------------------------- secrets


def secret_files(docs: list[dict[str, Any]]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in one(docs, "Secret")["data"].items()}


def test_secrets_are_generated_long_enough(docs: list[dict[str, Any]], sts: dict[str, Any]) -> None:
    files = secret_files(docs)
    assert set(files) == {"cluster.secret", "jwt-hs256.key"}
    assert all(len(v) >= 32 for v in files.values())
    assert files["cluster.secret"] != files["jwt-hs256.key"]
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == one(docs, "Secret")["metadata"]["name"]


def test_generated_secret_is_kept_across_upgrades() -> None:
    """Offline, `lookup` finds nothing, so each render draws a new secret;
    against a cluster the template reuses the stored one. Both halves: the
    draw is random, and the template looks the Secret up before drawing."""
    first, second = secret_files(manifests(render())), secret_files(manifests(render()))
    assert first["cluster.secret"] != second["cluster.secret"]
    source = (CHART_DIR / "templates" / "secret.yaml").read_text()
    assert 'lookup "v1" "Secret" .Release.Namespace $name' in source
    assert source.index("lookup") < source.index("randAlphaNum")


def test_given_secrets_are_used_verbatim() -> None:
    values = {"secrets": {"clusterSecret": "c" * 40, "jwtHs256Key": "j" * 33}}
    files = secret_files(manifests(render(values)))
    assert files == {"cluster.secret": b"c" * 40, "jwt-hs256.key": b"j" * 33}


def test_existing_secret_replaces_the_generated_one() -> None:
    docs = manifests(render({"secrets": {"existingSecret": "tasks-keys"}}))
    assert not objects(docs, "Secret")
    volumes = {v["name"]: v for v in one(docs, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["secrets"]["secret"]["secretName"] == "tasks-keys"


# --------------------------------------------------- values.schema.json


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"replicas": 4}, id="even-replicas"),
        pytest.param({"replicas": 0}, id="zero-replicas"),
        pytest.param({"replicas": -3}, id="negative-replicas"),
        pytest.param({"replicas": "3"}, id="replicas-as-string"),
        pytest.param({"replicas": 2.5}, id="fractional-replicas"),
        pytest.param({"ports": {"http": -1, "zap": 9999, "peer": 7300}}, id="negative-port"),
        pytest.param({"ports": {"http": 70000, "zap": 9999, "peer": 7300}}, id="port-above-65535"),
        pytest.param({"config": {"durability": "fsync"}}, id="unknown-durability"),
        pytest.param({"config": {"raft": {"election_timeout": "500"}}}, id="duration-without-unit"),
        pytest.param({"config": {"raft": {"election_timeout": "1d"}}}, id="duration-in-days"),
        pytest.param({"config": {"raft": {"heartbeat_interval": "0s"}}}, id="zero-heartbeat"),
        pytest.param({"config": {"raft": {"propose_timeout": 5}}}, id="duration-as-number"),
        pytest.param({"config": {"raft": {"snapshot_every": -1}}}, id="negative-snapshot-every"),
        pytest.param({"config": {"raft": {"electon_timeout": "1s"}}}, id="misspelt-raft-key"),
        pytest.param({"config": {"partitions": 0}}, id="zero-partitions"),
        pytest.param({"config": {"partitions": 5000}}, id="too-many-partitions"),
        pytest.param({"config": {"storage": {"map_size": "64MB"}}}, id="decimal-size-unit"),
        pytest.param({"config": {"data_dir": "/elsewhere"}}, id="chart-owned-config-key"),
        pytest.param({"config": {"auth": {"hs256_secret_file": "/k"}}}, id="chart-owned-auth-key"),
        pytest.param({"config": {"replication_factor": "three"}}, id="replication-factor-as-string"),
        pytest.param({"replica": 3}, id="unknown-top-level-key"),
        pytest.param({"secrets": {"clusterSecret": "too-short"}}, id="short-cluster-secret"),
        pytest.param({"persistence": {"size": "ten gigs"}}, id="bad-volume-size"),
        pytest.param({"podAntiAffinity": "always"}, id="unknown-anti-affinity"),
        pytest.param({"podDisruptionBudget": {"maxUnavailable": 0}}, id="zero-max-unavailable"),
        pytest.param({"probes": {"startup": {"periodSeconds": 0, "timeoutSeconds": 1, "failureThreshold": 1}}}, id="zero-probe-period"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="values don't meet the specifications"):
        render(values)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"replicas": 1}, id="one-replica"),
        pytest.param({"replicas": 5}, id="five-replicas"),
        pytest.param({"config": {"durability": "nosync"}}, id="nosync"),
        pytest.param({"config": {"raft": {"election_timeout": "1.5s", "heartbeat_interval": "250ms"}}}, id="fractional-duration"),
        pytest.param({"config": {"raft": {"idle_after": "1h30m"}}}, id="compound-duration"),
        pytest.param({"config": {"storage": {"map_size_max": 1073741824, "reserve_disk": 0}}}, id="sizes-in-bytes"),
        pytest.param({"config": {"auth": {"require_identity": False, "leeway": "0"}}}, id="auth-off"),
        pytest.param({"config": {"limits": {"rate_per_org": 12.5}, "log_level": "debug"}}, id="other-groups"),
        pytest.param({"podDisruptionBudget": {"maxUnavailable": "34%"}}, id="percentage-budget"),
        pytest.param({"global": {"imageRegistry": "registry.example"}}, id="parent-chart-globals"),
    ],
)
def test_schema_accepts_good_values(values: dict[str, Any]) -> None:
    """The schema is not stricter than tasksd where it should not be."""
    assert one(manifests(render(values)), "StatefulSet")


# ------------------------------------------------------------- yamllint


@pytest.fixture(scope="module")
def yamllint_conf() -> YamlLintConfig:
    return YamlLintConfig(file=str(REPO / "helm" / ".yamllint"))


@pytest.mark.parametrize("name", ["values.yaml", "Chart.yaml"])
def test_chart_yaml_files_pass_yamllint(name: str, yamllint_conf: YamlLintConfig) -> None:
    problems = list(linter.run((CHART_DIR / name).read_text(), yamllint_conf, name))
    assert problems == [], "\n".join(str(p) for p in problems)


@pytest.mark.parametrize("values", [None, ALL_FEATURES], ids=["defaults", "every-feature"])
def test_rendered_manifests_pass_yamllint(values: dict[str, Any] | None, yamllint_conf: YamlLintConfig) -> None:
    text = manifest_text(render(values))
    problems = list(linter.run(text, yamllint_conf))
    lines = text.splitlines()
    assert problems == [], "\n".join(f"{p}: {lines[p.line - 1]!r}" for p in problems)


def test_yamllint_config_catches_problems(yamllint_conf: YamlLintConfig) -> None:
    """The lint above can fail: a duplicate key or trailing space is reported."""
    problems = list(linter.run("a: 1\na: 2\nb: 3 \n", yamllint_conf))
    assert {p.rule for p in problems} >= {"key-duplicates", "trailing-spaces"}


# ---------------------------------------------------------------- NOTES


def test_notes_tell_how_to_reach_the_cluster() -> None:
    notes = render()["tasks/templates/NOTES.txt"]
    assert f"kubectl -n {NAMESPACE} port-forward svc/tasks 7243:7243 9999:9999" in notes
    assert "tasksctl cluster status" in notes
    assert "mint-token.py --org ORG" in notes
    without_auth = render({"config": {"auth": {"require_identity": False}}})["tasks/templates/NOTES.txt"]
    assert "mint-token" not in without_auth and "tasksctl cluster status" in without_auth


# ------------------------------------------------------------ Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continuation line ends the Dockerfile"
    return out


def test_dockerfile_builds_a_small_non_root_tasksd_image(sts: dict[str, Any]) -> None:
    steps = dockerfile_instructions()
    froms = [args for op, args in steps if op == "FROM"]
    assert len(froms) >= 2 and all(f.startswith("python:3.11-slim") for f in froms), froms
    final = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM"):]
    ops = dict(final)
    assert json.loads(ops["ENTRYPOINT"]) == ["tasksd"]
    assert json.loads(ops["CMD"])[0] == "serve"
    assert set(ops["EXPOSE"].split()) == {"7243", "9999", "7300"}
    user = ops["USER"].split(":")[0]
    assert user.isdigit() and int(user) != 0
    # The chart runs the image as its own user and mounts the data volume
    # where the image declares it.
    assert int(user) == sts["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert json.loads(ops["VOLUME"]) == ["/var/lib/tasks"]
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests", "tasks-data"} <= set(ignored)
