"""Run a rendered StatefulSet's pods as local processes, as the kubelet would.

For pod ``i`` of the StatefulSet this takes, exactly as rendered, the
container's command, args and env (downward-API ``fieldRef``s and ``$(VAR)``
references resolved the way Kubernetes resolves them) and the files of its
mounted ConfigMaps and Secrets. Only what a pod gets from its surroundings is
translated, and nothing else:

* addresses: every pod gets its own loopback IP (all of 127/8 is loopback on
  Linux) standing in for its stable DNS name
  ``<pod>.<serviceName>.<namespace>.svc.<clusterDomain>`` and for its wildcard
  listen address; a rendered port is kept when it is free on that IP, else a
  free one replaces it;
* paths: every ``mountPath`` becomes a directory under the pod's root, and the
  command is looked up in the project's ``.venv/bin`` (the image's PATH).

A name or port that has no translation is left alone, so a chart that points a
node at an address Kubernetes would not give it fails to form a cluster here.
"""

from __future__ import annotations

import base64
import random
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import NodeProcess

VENV_BIN = Path(__file__).resolve().parents[2] / ".venv" / "bin"
WILDCARD_HOSTS = ("0.0.0.0", "[::]")
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")


def expand_vars(text: str, defined: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion: a reference to a variable defined
    earlier is replaced, ``$$`` escapes ``$``, anything else stays as written."""

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return defined.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def _bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def _free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        return int(s.getsockname()[1])


@dataclass
class PodNet:
    """What the network gives one pod: its DNS name, its IP, its ports."""

    name: str
    dns: str
    ip: str
    ports: dict[int, int]  # rendered container port -> port used here


def loopback_network(
    pod_names: list[str], dns_suffix: str, container_ports: list[int],
    known: dict[str, PodNet] | None = None,
) -> list[PodNet]:
    """One loopback IP per pod (127.x.y.<ordinal + 1>), from a randomly chosen
    127.x.y.0/24 so that concurrent test runs on this machine rarely meet;
    rendered ports are kept where they are free on that IP. Pods in ``known``
    (a running set being scaled or upgraded) keep their IP and ports, as pods
    keep their DNS names."""
    known = known or {}
    if known:
        x, y = (int(part) for part in next(iter(known.values())).ip.split(".")[1:3])
    else:
        x, y = random.randint(1, 254), random.randint(1, 254)
    net = []
    for i, name in enumerate(pod_names):
        if name in known:
            net.append(known[name])
            continue
        ip = f"127.{x}.{y}.{i + 1}"
        ports = {p: (p if _bindable(ip, p) else _free_port(ip)) for p in container_ports}
        net.append(PodNet(name=name, dns=f"{name}.{dns_suffix}", ip=ip, ports=ports))
    return net


class Translator:
    """Rewrites addresses and mount paths in a string, nothing else."""

    def __init__(self, net: list[PodNet], me: PodNet, mounts: dict[str, Path]) -> None:
        self.hosts: dict[str, PodNet] = {p.dns: p for p in net}
        for wildcard in WILDCARD_HOSTS:
            self.hosts[wildcard] = me
        alternatives = "|".join(re.escape(h) for h in sorted(self.hosts, key=len, reverse=True))
        self._addr = re.compile(rf"(?<![\w.-])({alternatives}):(\d+)\b")
        self.mounts = {mount: str(local) for mount, local in mounts.items()}
        paths = "|".join(re.escape(m) for m in sorted(self.mounts, key=len, reverse=True))
        # One pass, so that a replacement (a path under /tmp, say) is never
        # itself rewritten by a shorter mount such as /tmp.
        self._path = re.compile(rf"(?<![\w/.-])({paths})(?=/|\b|$)") if paths else None

    def __call__(self, text: str) -> str:
        def addr(m: re.Match[str]) -> str:
            pod = self.hosts[m.group(1)]
            port = int(m.group(2))
            if port not in pod.ports:
                raise AssertionError(f"{m.group(0)}: port {port} is not a container port of {pod.name}")
            return f"{pod.ip}:{pod.ports[port]}"

        text = self._addr.sub(addr, text)
        if self._path is not None:
            text = self._path.sub(lambda m: self.mounts[m.group(1)], text)
        return text


@dataclass
class Pod:
    """One pod of the StatefulSet, materialised under ``root``."""

    name: str
    net: PodNet
    root: Path
    argv: list[str]
    env: dict[str, str]
    mounts: dict[str, Path]
    http_port: int

    @property
    def url(self) -> str:
        return f"http://{self.net.ip}:{self.net.ports[self.http_port]}"

    def local(self, path: str) -> Path:
        """Where a path inside the container lives on this machine."""
        for mount in sorted(self.mounts, key=len, reverse=True):
            if path == mount or path.startswith(mount + "/"):
                return self.mounts[mount] / path[len(mount):].lstrip("/")
        raise AssertionError(f"{path} is on no mounted volume")


class PodProcess(NodeProcess):
    """A ``tasksd`` started from a pod's exact argv and env; the HTTP helpers
    of :class:`tests.support.NodeProcess` talk to it."""

    def __init__(self, pod: Pod) -> None:
        super().__init__(pod.root)
        self.pod = pod
        self.url = pod.url
        self.log_path = pod.root / "tasksd.log"

    def start(self, timeout: float = 30.0, ready: bool = False) -> PodProcess:
        """Spawn the process and wait until /healthz answers (the startup probe)."""
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            self.pod.argv, env=self.pod.env, cwd=self.pod.root,
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._close_log()
                raise RuntimeError(f"{self.pod.name} exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.get("/healthz", timeout=1)[0] == 200:
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.pod.name}: /healthz never answered:\n{self.log()}")

    def stop(self) -> int | None:
        """SIGTERM and wait for the exit code, as the kubelet deletes a pod."""
        try:
            return super().stop()
        finally:
            self._close_log()

    def kill(self, sig: int = signal.SIGKILL) -> None:
        try:
            super().kill(sig)
        finally:
            self._close_log()

    def _close_log(self) -> None:
        log = getattr(self, "_log", None)
        if log is not None:
            log.close()


def _field_ref(path: str, pod_name: str, namespace: str, net: PodNet, sa: str, machine: str) -> str:
    values = {
        "metadata.name": pod_name,
        "metadata.namespace": namespace,
        "status.podIP": net.ip,
        "spec.serviceAccountName": sa,
        "spec.nodeName": machine,
    }
    if path not in values:
        raise AssertionError(f"fieldRef {path} is not simulated")
    return values[path]


def _decode(obj: dict[str, Any]) -> dict[str, bytes]:
    """A ConfigMap's or Secret's files as bytes."""
    files: dict[str, bytes] = {}
    for key, text in (obj.get("data") or {}).items():
        files[key] = base64.b64decode(text) if obj["kind"] == "Secret" else text.encode()
    for key, text in (obj.get("stringData") or {}).items():
        files[key] = text.encode()
    for key, text in (obj.get("binaryData") or {}).items():
        files[key] = base64.b64decode(text)
    return files


def build_pods(
    docs: list[dict[str, Any]], root: Path, *, cluster_domain: str,
    untranslated_env: frozenset[str] = frozenset(),
    network: dict[str, PodNet] | None = None,
    machines: dict[str, str] | None = None,
) -> list[Pod]:
    """Materialise every pod of the (single) StatefulSet in ``docs`` under ``root``.

    ``untranslated_env`` names variables whose (resolved) value is passed on
    as Kubernetes would, with the pod's real DNS names: for addresses a node
    only publishes and never dials, to see what it publishes.
    ``network`` keeps the addresses of pods that already run (a render of the
    same release with more replicas, or a new revision).
    ``machines`` maps pods to the Kubernetes node they are scheduled on
    (``spec.nodeName``); by default every pod has a machine of its own.
    """
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    namespace = sts["metadata"]["namespace"]
    spec = sts["spec"]
    pod_spec = spec["template"]["spec"]
    (container,) = pod_spec["containers"]
    names = [f"{sts['metadata']['name']}-{i}" for i in range(spec["replicas"])]
    suffix = f"{spec['serviceName']}.{namespace}.svc.{cluster_domain}"
    container_ports = [p["containerPort"] for p in container["ports"]]
    http_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    net = loopback_network(names, suffix, container_ports, network)
    stores = {(d["kind"], d["metadata"]["name"]): d for d in docs if d["kind"] in ("ConfigMap", "Secret")}
    claims = {t["metadata"]["name"] for t in spec.get("volumeClaimTemplates", [])}
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    sa = pod_spec.get("serviceAccountName", "default")

    pods = []
    for me in net:
        pod_root = root / me.name
        mounts = {m["mountPath"]: pod_root / "mnt" / m["name"] for m in container["volumeMounts"]}
        translate = Translator(net, me, mounts)
        for m in container["volumeMounts"]:
            local = mounts[m["mountPath"]]
            local.mkdir(parents=True, exist_ok=True)
            if m["name"] in claims:
                continue  # the pod's persistent volume: kept across restarts
            vol = volumes[m["name"]]
            if "emptyDir" in vol:
                continue
            if "configMap" in vol:
                files = {k: translate(v.decode()).encode() for k, v in _decode(stores["ConfigMap", vol["configMap"]["name"]]).items()}
            elif "secret" in vol:
                files = _decode(stores["Secret", vol["secret"]["secretName"]])
            else:
                raise AssertionError(f"volume {vol} is not simulated")
            for key, data in files.items():
                (local / key).write_bytes(data)

        env: dict[str, str] = {}
        for item in container.get("env", []):
            if "value" in item:
                value = expand_vars(str(item["value"]), env)
            elif "fieldRef" in item["valueFrom"]:
                machine = (machines or {}).get(me.name, f"machine-of-{me.name}")
                value = _field_ref(item["valueFrom"]["fieldRef"]["fieldPath"], me.name, namespace, me, sa, machine)
            elif "secretKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["secretKeyRef"]
                value = _decode(stores["Secret", ref["name"]])[ref["key"]].decode()
            elif "configMapKeyRef" in item["valueFrom"]:
                ref = item["valueFrom"]["configMapKeyRef"]
                value = _decode(stores["ConfigMap", ref["name"]])[ref["key"]].decode()
            else:
                raise AssertionError(f"env {item} is not simulated")
            env[item["name"]] = value
        env = {k: (v if k in untranslated_env else translate(v)) for k, v in env.items()}

        command = [expand_vars(a, env) for a in container.get("command", [])]
        args = [expand_vars(a, env) for a in container.get("args", [])]
        assert command, "the container must name its command: the test runs it without the image"
        program = VENV_BIN / command[0]
        assert program.exists(), f"{command[0]} is not installed in {VENV_BIN}"
        argv = [str(program), *(translate(a) for a in command[1:]), *(translate(a) for a in args)]
        # A container's environment: its own variables and the image's PATH,
        # nothing inherited from the test runner (no stray TASKSD_*).
        full_env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(pod_root), "LANG": "C.UTF-8", **env}
        pods.append(Pod(name=me.name, net=me, root=pod_root, argv=argv, env=full_env, mounts=mounts, http_port=http_port))
    return pods
