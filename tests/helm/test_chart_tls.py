"""The chart's `tls` values: a Secret in cert-manager's layout (tls.crt, tls.key,
ca.crt) mounted read-only, tasksd's tls.* keys pointing at it, HTTPS probes,
and the in-pod probe (probe.py) when client certificates are required, run
here against a real node."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from hanzo_tasks.cluster.config import load_config
from hanzo_tasks.testing import TestNode
from kubernetes_validate import utils as kv_utils
from yamllint import linter
from yamllint.config import YamlLintConfig

from tests.helm.chart_support import REPO, manifest_text, manifests, one, render
from tests.tls_support import Ca

TLS_ON = {"tls": {"enabled": True, "secretName": "tasks-tls"}}
TLS_DIR = "/etc/tasks/tls"


def tls_values(**more: Any) -> dict[str, Any]:
    return {"tls": {**TLS_ON["tls"], **more}}


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return c


def node_config(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return yaml.safe_load(one(docs, "ConfigMap")["data"]["tasksd.yaml"])


def test_tls_is_off_by_default() -> None:
    docs = manifests(render())
    c = container(docs)
    assert "tls" not in node_config(docs)
    assert all(m["name"] != "tls" for m in c["volumeMounts"])
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_tls_mounts_the_secret_and_points_tasksd_at_it(tmp_path: Path) -> None:
    docs = manifests(render(tls_values()))
    sts = one(docs, "StatefulSet")
    c = container(docs)
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "tls"]
    assert mount == {"name": "tls", "mountPath": TLS_DIR, "readOnly": True}  # a directory: renewals reach the pod
    (volume,) = [v for v in sts["spec"]["template"]["spec"]["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == "tasks-tls"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"
    text = one(docs, "ConfigMap")["data"]["tasksd.yaml"]
    path = tmp_path / "tasksd.yaml"
    path.write_text(text)
    cfg = load_config(["--config", str(path), "--node-id", "tasks-0"], {})
    assert cfg.tls.cert_file == f"{TLS_DIR}/tls.crt" and cfg.tls.key_file == f"{TLS_DIR}/tls.key"
    assert cfg.tls.client_ca_file is None  # clientAuth none by default
    assert (cfg.tls.peer_cert_file, cfg.tls.peer_key_file, cfg.tls.peer_ca_file) == (
        f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt")
    assert "probe.py" not in one(docs, "ConfigMap")["data"]


def test_tls_without_peer_mtls_and_with_optional_client_certificates() -> None:
    cfg = node_config(manifests(render(tls_values(peer=False, clientAuth="optional"))))
    assert "peer_cert_file" not in cfg["tls"]
    assert cfg["tls"]["client_ca_file"] == f"{TLS_DIR}/ca.crt" and cfg["tls"]["client_auth"] == "optional"


def test_the_user_may_tune_the_reload_interval_with_tls_on() -> None:
    values = {**tls_values(), "config": {"tls": {"reload_interval": "30s"}}}
    cfg = node_config(manifests(render(values)))
    assert cfg["tls"]["reload_interval"] == "30s" and cfg["tls"]["cert_file"] == f"{TLS_DIR}/tls.crt"


@pytest.mark.parametrize("client_auth", ["optional", "required"])
def test_tls_manifests_are_valid_kubernetes(client_auth: str) -> None:
    for doc in manifests(render(tls_values(clientAuth=client_auth))):
        kubernetes_validate.validate(doc, kv_utils.latest_version(), strict=True)


def test_tls_manifests_pass_yamllint() -> None:
    conf = YamlLintConfig(file=str(REPO / "helm" / ".yamllint"))
    text = manifest_text(render({**tls_values(clientAuth="required"), "serviceMonitor": {"enabled": True}}))
    problems = list(linter.run(text, conf))
    assert problems == [], "\n".join(str(p) for p in problems)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"tls": {"enabled": True}}, id="enabled-without-secret"),
        pytest.param(tls_values(clientAuth="sometimes"), id="unknown-client-auth"),
        pytest.param({"tls": {"enabled": True, "secretName": "Not_A_Name"}}, id="bad-secret-name"),
        pytest.param({"tls": {"enabeld": True}}, id="misspelt-key"),
        pytest.param({"config": {"tls": {"cert_file": "/x"}}}, id="chart-owned-tls-key"),
    ],
)
def test_schema_rejects_bad_tls_values(values: dict[str, Any]) -> None:
    with pytest.raises(helm.HelmValuesError):
        render(values)


def test_required_client_certificates_probe_in_the_pod(tmp_path: Path) -> None:
    """The kubelet presents no client certificate, so the probes exec probe.py;
    run it here, as rendered, against a node that requires client certificates."""
    docs = manifests(render(tls_values(clientAuth="required")))
    c = container(docs)
    assert c["readinessProbe"]["exec"]["command"] == ["python3", "/etc/tasks/config/probe.py", "/readyz"]
    assert "httpGet" not in c["livenessProbe"]
    script = one(docs, "ConfigMap")["data"]["probe.py"]
    ca = Ca(tmp_path / "pki")
    served = ca.issue("tasks-0")  # the node's files
    pod_dir = tmp_path / "tls"  # the pod's mount as probe.py reads it
    pod_dir.mkdir()
    (pod_dir / "ca.crt").write_bytes(ca.ca_file.read_bytes())
    ca.issue("tasks-0-probe", cert=pod_dir / "tls.crt", key=pod_dir / "tls.key")
    config = {"tls.cert_file": str(served.cert), "tls.key_file": str(served.key),
              "tls.client_ca_file": str(ca.ca_file)}
    with TestNode(config=config, zap=False) as node:
        port = node.url.rsplit(":", 1)[1]
        local = script.replace(TLS_DIR, str(pod_dir)).replace("localhost:7243", f"localhost:{port}")
        probe = tmp_path / "probe.py"
        probe.write_text(local)
        ok = subprocess.run([sys.executable, str(probe), "/readyz"], capture_output=True, text=True, timeout=30)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        # A certificate of another CA fails the probe (it is not a formality).
        Ca(tmp_path / "other", "other-ca").issue("x", cert=pod_dir / "tls.crt", key=pod_dir / "tls.key")
        bad = subprocess.run([sys.executable, str(probe), "/readyz"], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 1, bad.stdout + bad.stderr


def test_notes_and_service_monitor_speak_https() -> None:
    values = {**tls_values(clientAuth="required"), "serviceMonitor": {"enabled": True}}
    rendered = render(values)
    notes = next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))
    assert "export TASKS_URL=https://127.0.0.1:7243" in notes and "TASKS_CA_FILE" in notes
    assert "zaps://tasks.tasks-test.svc.cluster.local:9999" in notes
    assert "--ca-file /etc/tasks/tls/ca.crt --cert-file /etc/tasks/tls/tls.crt" in notes
    (endpoint,) = one(manifests(rendered), "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "tasks-tls", "key": "ca.crt"}
    assert endpoint["tlsConfig"]["keySecret"] == {"name": "tasks-tls", "key": "tls.key"}
    plain = render({"serviceMonitor": {"enabled": True}})
    assert "scheme" not in one(manifests(plain), "ServiceMonitor")["spec"]["endpoints"][0]
    assert "https" not in next(t for p, t in plain.items() if p.endswith("NOTES.txt"))
