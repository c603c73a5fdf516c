"""The chart on machines with many cores (docs/many-cores.md): a pod is one
Python process and uses about one core, so a machine runs several pods, and
each pod publishes the Kubernetes node it runs on as its failure domain
(``node_zone``), which keeps the replicas of a partition on distinct machines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
from hanzo_tasks.cluster.config import load_config

from tests.helm.chart_support import CHART_DIR, manifests, one, render
from tests.helm.pods import build_pods

# Six pods on three machines of two cores: one pod per core.
MANY_CORES: dict[str, Any] = {"replicas": 6, "resources": {"requests": {"cpu": "1", "memory": "256Mi"}}}


def env_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    (container,) = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in container["env"]}


def test_each_pod_publishes_its_machine_as_its_zone_by_default() -> None:
    env = env_of(manifests(render()))
    assert env["TASKSD_NODE_ZONE"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_failure_domain_none_publishes_no_zone() -> None:
    assert "TASKSD_NODE_ZONE" not in env_of(manifests(render({"failureDomain": "none"})))


def test_six_pods_on_three_machines_publish_three_zones(tmp_path: Path) -> None:
    """The pods as the kubelet would start them: the downward API gives each
    its machine, and tasksd's own loader reads it as node_zone."""
    docs = manifests(render(MANY_CORES))
    machines = {f"tasks-{i}": f"worker-{i % 3}" for i in range(6)}
    pods = build_pods(docs, tmp_path, cluster_domain="cluster.local", machines=machines)
    assert [p.name for p in pods] == list(machines)
    for pod in pods:
        assert pod.env["TASKSD_NODE_ZONE"] == machines[pod.name]
        config_path = pod.argv[pod.argv.index("--config") + 1]
        cfg = load_config(["--config", config_path], pod.env)
        assert (cfg.node_id, cfg.node_zone) == (pod.name, machines[pod.name])
    (container,) = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    assert container["resources"]["requests"]["cpu"] == "1"
    assert "cpu" not in container["resources"].get("limits", {})  # no CFS throttling of Raft


@pytest.mark.parametrize("replicas", [6, 7, 8, 12])
def test_from_six_pods_on_any_count_is_accepted(replicas: int) -> None:
    assert one(manifests(render({"replicas": replicas})), "StatefulSet")["spec"]["replicas"] == replicas


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"replicas": 2}, id="two-replicas"),
        pytest.param({"replicas": 4}, id="four-replicas"),
        pytest.param({"failureDomain": "zone"}, id="unknown-failure-domain"),
        pytest.param({"config": {"node_zone": "m"}}, id="chart-owned-node-zone"),
    ],
)
def test_schema_rejects(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError, match="values don't meet the specifications"):
        render(values)


def test_lint_is_clean_with_many_cores_values() -> None:
    report = helm.lint(CHART_DIR, {**MANY_CORES, "podAntiAffinity": "none"}, strict=True, kube_version="v1.31.0")
    assert report["errors"] == [] and report["messages"] == [], report


def test_the_example_of_the_readme_renders_and_lints() -> None:
    """helm/README.md, "Many cores": twelve pods of one core on three machines."""
    values: dict[str, Any] = {
        "replicas": 12, "resources": {"requests": {"cpu": "1"}}, "config": {"partitions": 48},
        "podAntiAffinity": "none",
        "topologySpreadConstraints": [{
            "maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "tasks"}},
        }],
    }
    readme = (CHART_DIR.parent / "README.md").read_text()
    assert "--set replicas=12 --set resources.requests.cpu=1" in readme
    spec = one(manifests(render(values)), "StatefulSet")["spec"]
    assert spec["replicas"] == 12
    assert "affinity" not in spec["template"]["spec"]
    report = helm.lint(CHART_DIR, values, strict=True, kube_version="v1.31.0")
    assert report["errors"] == [] and report["messages"] == [], report
