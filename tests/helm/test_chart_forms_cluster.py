"""The rendered chart really forms a cluster.

The chart is rendered (3 replicas, default values) and each pod of its
StatefulSet is started as a local ``tasksd`` process from exactly what the pod
would get: the container's command, args and env, and the files of its
ConfigMap and Secret (tests/helm/pods.py). Only addresses, ports and paths are
translated: pod DNS names to loopback IPs, mount paths to directories. If the
peers list, the node ids, the advertised addresses or the secret wiring were
wrong, the three nodes would not elect leaders and /readyz would never be 200.

Then a pod is "deleted" (SIGTERM, as the kubelet does) and started again on
its volume, and the cluster must heal.
"""

from __future__ import annotations

import base64
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helm.chart_support import CHART_DIR, manifests, one, render
from tests.helm.pods import VENV_BIN, Pod, PodProcess, build_pods

WF = "/v1/tasks/namespaces/default/workflows"
READY_TIMEOUT = 60.0


class Cluster:
    """The pods of one render, their processes, and an API token."""

    def __init__(self, pods: list[Pod], config: dict[str, Any]) -> None:
        self.pods = pods
        self.config = config
        self.procs = {p.name: PodProcess(p) for p in pods}
        self.headers: dict[str, str] = {}

    def start(self, name: str | None = None) -> None:
        for pod_name, proc in self.procs.items():
            if name in (None, pod_name):
                proc.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        """Every pod's readiness probe passes (bounded)."""
        deadline = time.monotonic() + timeout
        pending = list(self.procs)
        while pending and time.monotonic() < deadline:
            pending = [n for n in pending if not self._ready(n)]
            if pending:
                time.sleep(0.1)
        if pending:
            logs = "\n".join(f"--- {n}\n{self.procs[n].log()[-4000:]}" for n in pending)
            raise AssertionError(f"not ready after {timeout}s: {pending}\n{logs}")

    def _ready(self, name: str) -> bool:
        proc = self.procs[name]
        assert proc.proc is not None and proc.proc.poll() is None, f"{name} exited:\n{proc.log()}"
        try:
            return proc.get("/readyz", timeout=2)[0] == 200
        except OSError:
            return False

    def request(self, name: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        status, payload, _ = self.procs[name].request(method, path, body, headers=self.headers, timeout=15)
        return status, payload

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.proc is not None:
                try:
                    proc.stop()
                except Exception:
                    proc.kill()


def mint_token(pod: Pod, org: str, *extra: str) -> str:
    """A token from the chart's own mint-token.py and the pod's mounted key,
    as NOTES.txt tells an operator to do with kubectl exec."""
    script = pod.local("/etc/tasks/config/mint-token.py")
    out = subprocess.run(
        [str(VENV_BIN / "python"), str(script), "--org", org, "--ttl", "600", *extra],
        env=pod.env, capture_output=True, text=True, timeout=30, check=True,
    )
    token = out.stdout.strip()
    assert token.count(".") == 2, out
    return token


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    docs = manifests(render())
    config = yaml.safe_load(one(docs, "ConfigMap")["data"]["tasksd.yaml"])
    pods = build_pods(docs, tmp_path_factory.mktemp("pods"), cluster_domain="cluster.local")
    c = Cluster(pods, config)
    try:
        c.start()
        c.wait_ready()
        if config["auth"]["require_identity"]:
            c.headers = {"Authorization": f"Bearer {mint_token(pods[0], 'acme')}"}
        yield c
    finally:
        c.stop_all()


def start_workflow(c: Cluster, via: str, wid: str, timeout: float = 20.0) -> dict[str, Any]:
    """Start a workflow through one pod, retrying 503 with the same requestId
    (the outcome of a 503 is unknown, SPEC §4.1)."""
    deadline = time.monotonic() + timeout
    body = {"workflowId": wid, "requestId": f"req-{wid}", "workflowType": {"name": "helm.check"}, "taskQueue": {"name": "tasks"}}
    while True:
        status, answer = c.request(via, "POST", WF, body)
        if status == 200:
            return answer
        assert status == 503 and time.monotonic() < deadline, (status, answer)
        time.sleep(0.2)


def read_workflow(c: Cluster, name: str, wid: str, timeout: float = 20.0) -> dict[str, Any]:
    """A linearizable read (the default): it reflects every acknowledged write.

    Its barrier is a Raft round; a leadership change under it (the leader
    balancer moves leaderships back after a pod returns) answers 503, which a
    client retries (SPEC §4.1). 404 is never retried: that would be a lost write.
    """
    deadline = time.monotonic() + timeout
    while True:
        status, body = c.request(name, "GET", f"{WF}/{wid}")
        if status == 200:
            return body
        assert status == 503 and time.monotonic() < deadline, (name, status, body)
        time.sleep(0.2)


def wait_healthy(c: Cluster, name: str, timeout: float = 20.0) -> dict[str, Any]:
    """GET /v1/tasks/cluster/health until it is 200 (bounded): right after a
    restart or a leadership move a group may briefly report no leader."""
    deadline = time.monotonic() + timeout
    while True:
        status, health = c.request(name, "GET", "/v1/tasks/cluster/health")
        if status == 200:
            return health
        assert status == 503 and time.monotonic() < deadline, (name, status, health)
        time.sleep(0.2)


def test_rendered_pods_form_one_raft_cluster(cluster: Cluster) -> None:
    names = [p.name for p in cluster.pods]
    assert names == ["tasks-0", "tasks-1", "tasks-2"]
    for pod in cluster.pods:
        status, info = cluster.request(pod.name, "GET", "/v1/tasks/cluster")
        assert status == 200, info
        assert info["nodeId"] == pod.name  # node id = pod name (downward API)
        assert info["replicator"] == "raft"
        assert info["partitionCount"] == cluster.config["partitions"]
        assert info["metaLeader"] in names
        assert [m["nodeId"] for m in info["members"]] == names
        # Each member is known at its advertised peer address: its stable
        # DNS name (here, that name's loopback stand-in).
        advertised = {p.name: f"{p.net.ip}:{p.net.ports[7300]}" for p in cluster.pods}
        assert {m["nodeId"]: m["peerAddr"] for m in info["members"]} == advertised
        assert wait_healthy(cluster, pod.name)["status"] == "ok"
        deadline = time.monotonic() + 20
        while not all(p["leader"] in names for p in info["partitions"]):  # every group led by a pod
            assert time.monotonic() < deadline, info["partitions"]
            time.sleep(0.2)
            status, info = cluster.request(pod.name, "GET", "/v1/tasks/cluster")


def test_a_write_through_any_pod_is_visible_through_every_pod(cluster: Cluster) -> None:
    for i, pod in enumerate(cluster.pods):
        started = start_workflow(cluster, pod.name, f"helm-{i}")
        # (started is false when a 503 was retried: the first try had committed.)
        assert started["execution"]["workflowId"] == f"helm-{i}"
        for reader in cluster.pods:
            info = read_workflow(cluster, reader.name, f"helm-{i}")["workflowExecutionInfo"]
            assert info["execution"] == started["execution"]


def test_every_pod_serves_the_metrics_the_chart_readme_names(cluster: Cluster) -> None:
    """What the ServiceMonitor scrapes (port `http`, path /metrics) answers on
    every pod, with the series helm/README.md suggests alerting on."""
    (sm,) = [d for d in manifests(render({"serviceMonitor": {"enabled": True}})) if d["kind"] == "ServiceMonitor"]
    (endpoint,) = sm["spec"]["endpoints"]
    readme = (CHART_DIR.parent / "README.md").read_text()
    named = set(re.findall(r"(tasks_raft_[a-z_]+|tasks_storage_full_total)", readme))
    assert named, "the README names no metric"
    for pod in cluster.pods:
        status, text, _ = cluster.procs[pod.name].request("GET", endpoint["path"])
        assert status == 200
        served = set(re.findall(r"^(tasks_[a-z_]+?)(?:_bucket|_count|_sum)?[{ ]", text, re.M))
        assert named <= served, named - served


def test_a_deleted_pod_comes_back_on_its_volume_and_the_cluster_heals(cluster: Cluster) -> None:
    """Delete the meta leader's pod, the most disruptive one: the other two
    keep a majority and go on writing; the pod restarts from its data volume,
    catches up, and serves linearizable reads of writes it missed."""
    status, info = cluster.request("tasks-0", "GET", "/v1/tasks/cluster")
    assert status == 200
    victim = info["metaLeader"]
    others = [p.name for p in cluster.pods if p.name != victim]
    before = start_workflow(cluster, others[0], "before-delete")

    rc = cluster.procs[victim].stop()  # SIGTERM, then wait: the kubelet's delete
    assert rc == 0, cluster.procs[victim].log()[-4000:]

    during = start_workflow(cluster, others[1], "while-deleted", timeout=30)
    assert read_workflow(cluster, others[0], "while-deleted")["workflowExecutionInfo"]["execution"] == during["execution"]

    cluster.start(victim)
    cluster.wait_ready()
    for wid, started in (("before-delete", before), ("while-deleted", during)):
        assert read_workflow(cluster, victim, wid)["workflowExecutionInfo"]["execution"] == started["execution"]
    after = start_workflow(cluster, victim, "after-restart")
    for pod in cluster.pods:
        assert read_workflow(cluster, pod.name, "after-restart")["workflowExecutionInfo"]["execution"] == after["execution"]
    assert wait_healthy(cluster, victim)["status"] == "ok"


def secret_values(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Secret of a render as values: what `lookup` hands an upgrade."""
    data = one(docs, "Secret")["data"]
    return {
        "secrets": {
            "clusterSecret": base64.b64decode(data["cluster.secret"]).decode(),
            "jwtHs256Key": base64.b64decode(data["jwt-hs256.key"]).decode(),
        }
    }


def test_scale_to_five_then_roll_an_upgrade_one_pod_at_a_time(tmp_path: Path) -> None:
    """helm/README.md's procedures, step by step: make the new pods members
    (POST /v1/tasks/cluster/members, with their stable DNS names), upgrade the
    release to 5 replicas, then roll the old pods onto the new revision in
    the StatefulSet's order (highest ordinal first, each ready before the
    next). Writes keep succeeding at every step, and nothing is lost."""
    first = manifests(render())
    pods = build_pods(first, tmp_path, cluster_domain="cluster.local")
    c = Cluster(pods, {})
    try:
        c.start()
        c.wait_ready()
        tenant = {"Authorization": f"Bearer {mint_token(pods[0], 'acme')}"}
        c.headers = {"Authorization": f"Bearer {mint_token(pods[0], 'acme', '--cluster-admin')}"}
        written = {"before-scale": start_workflow(c, "tasks-0", "before-scale")}

        upgraded = manifests(render({"replicas": 5, **secret_values(first)}))
        network = {p.name: p.net for p in pods}
        new_pods = build_pods(upgraded, tmp_path, cluster_domain="cluster.local", network=network)
        assert [p.net for p in new_pods[:3]] == [p.net for p in pods]
        for pod in new_pods[3:]:
            member = {
                "nodeId": pod.name,
                "peer": f"{pod.net.ip}:{pod.net.ports[7300]}",
                "http": f"{pod.net.ip}:{pod.net.ports[7243]}",
                "zap": f"{pod.net.ip}:{pod.net.ports[9999]}",
            }
            operator, c.headers = c.headers, tenant  # an org's token, even its owner's, may not
            status, body = c.request("tasks-1", "POST", "/v1/tasks/cluster/members", member)
            c.headers = operator
            assert status == 403 and body["code"] == "permission_denied", body
            status, body = c.request("tasks-1", "POST", "/v1/tasks/cluster/members", member)
            assert status == 200, body
            c.procs[pod.name] = PodProcess(pod)
            c.procs[pod.name].start()
        c.wait_ready()
        written["after-scale"] = start_workflow(c, "tasks-4", "after-scale")

        for pod in reversed(new_pods[:3]):  # RollingUpdate: tasks-2, tasks-1, tasks-0
            assert c.procs[pod.name].stop() == 0
            written[f"without-{pod.name}"] = start_workflow(c, "tasks-3", f"without-{pod.name}", timeout=30)
            c.procs[pod.name] = PodProcess(pod)
            c.procs[pod.name].start()
            c.wait_ready()

        names = [p.name for p in new_pods]
        for pod in new_pods:
            status, info = c.request(pod.name, "GET", "/v1/tasks/cluster")
            assert status == 200 and [m["nodeId"] for m in info["members"]] == names, info
            for wid, started in written.items():
                assert read_workflow(c, pod.name, wid)["workflowExecutionInfo"]["execution"] == started["execution"]
    finally:
        c.stop_all()


def test_nodes_publish_their_advertised_client_addresses(tmp_path: Path) -> None:
    """A one-pod render, its pod started with the advertised HTTP and ZAP
    addresses left as Kubernetes gives them (nothing dials them; they are
    only published). Clients that discover ZAP through /v1/tasks/settings
    need the pod's DNS name there, not the address the node bound."""
    docs = manifests(render({"replicas": 1}))
    (pod,) = build_pods(
        docs, tmp_path, cluster_domain="cluster.local",
        untranslated_env=frozenset({"TASKSD_ADVERTISE_HTTP", "TASKSD_ADVERTISE_ZAP"}),
    )
    c = Cluster([pod], {})
    try:
        c.start()
        c.wait_ready()
        status, settings = c.request(pod.name, "GET", "/v1/tasks/settings")
        assert status == 200
        assert settings["zapAddr"] == pod.env["TASKSD_ADVERTISE_ZAP"]
        c.headers = {"Authorization": f"Bearer {mint_token(pod, 'acme')}"}
        status, info = c.request(pod.name, "GET", "/v1/tasks/cluster")
        (member,) = info["members"]
        assert (member["httpAddr"], member["zapAddr"]) == (
            pod.env["TASKSD_ADVERTISE_HTTP"], pod.env["TASKSD_ADVERTISE_ZAP"],
        )
    finally:
        c.stop_all()
