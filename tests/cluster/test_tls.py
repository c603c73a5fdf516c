"""TLS on a node's HTTP and ZAP listeners (docs/tls.md), against real sockets
and certificates of a throwaway CA: HTTPS with and without the CA, ZAP over
TLS carrying a worker's task, client-certificate auth, reloading on a file
change and on SIGHUP, and plaintext as the default."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import hanzo_tasks as tasks
import pytest
from hanzo_tasks.cluster.config import Config, ConfigError, config_from_mapping
from hanzo_tasks.cluster.node import Node
from hanzo_tasks.ctl.cli import main as tasksctl
from hanzo_tasks.testing import TestNode, wait_until

from tests.support import NodeProcess
from tests.tls_support import Ca, Issued, peer_serial


@pytest.fixture
def ca(tmp_path: Path) -> Ca:
    return Ca(tmp_path / "pki")


def tls_config(leaf: Issued, **more: Any) -> dict[str, Any]:
    return {"tls.cert_file": str(leaf.cert), "tls.key_file": str(leaf.key), **more}


def https_get(url: str, ctx: ssl.SSLContext) -> tuple[int, Any]:
    with urllib.request.urlopen(url, timeout=10, context=ctx) as r:
        return r.status, json.loads(r.read())


def served_serial(addr: str, ca: Ca, client: Issued | None = None) -> int:
    """The serial of the certificate a new TLS connection to ``host:port`` is served."""
    host, _, port = addr.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(ca.ca_file))
    if client is not None:
        ctx.load_cert_chain(str(client.cert), str(client.key))
    with socket.create_connection((host, int(port)), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as s:
        return peer_serial(s.getpeercert(binary_form=True))


def test_plaintext_is_the_default() -> None:
    cfg = Config()
    assert cfg.tls.cert_file is None and cfg.tls.peer_cert_file is None
    with TestNode() as node:
        assert node.url.startswith("http://")
        assert node.node.tls.all == []
        assert node.get("/healthz")[0] == 200
        with tasks.Client(node.url) as c:
            assert c.now("nobody-serves-this")  # plain HTTP, no context needed


def test_https_is_served_with_the_ca_and_refused_without(ca: Ca) -> None:
    leaf = ca.issue("node")
    with TestNode(config=tls_config(leaf)) as node:
        assert node.url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(ca.ca_file))
        assert https_get(node.url + "/healthz", trusted)[0] == 200
        with pytest.raises(urllib.error.URLError) as refused:
            https_get(node.url + "/healthz", ssl.create_default_context())
        assert isinstance(refused.value.reason, ssl.SSLCertVerificationError)
        # The library names the problem and the remedy.
        with tasks.Client(node.url) as c, pytest.raises(tasks.Unavailable, match="not trusted.*ca_file"):
            c.now("t")


def test_a_worker_completes_a_task_over_zap_with_tls(ca: Ca) -> None:
    leaf = ca.issue("node")
    with TestNode(config=tls_config(leaf)) as node:
        zap_tls = f"zaps://{node.zap_addr}"
        # Discovered: an https:// server's zapAddr is reached over TLS.
        with tasks.Client(node.url, handler=lambda t, p: {"doubled": p * 2},
                          ca_file=str(ca.ca_file)) as c:
            wid = c.now("double", 21)
            assert c.result(wid, timeout=20) == {"doubled": 42}
            (conn,) = c._zap_connections()
            assert conn.addr == zap_tls and conn.connected
        # Given: zaps://host:port, and TASKS_CA_FILE instead of the argument.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TASKS_CA_FILE", str(ca.ca_file))
            with tasks.Client(zap_addr=zap_tls, handler=lambda t, p: p + 1) as c:
                wid = c.now("inc", 1)
                assert c.result(wid, timeout=20) == 2
        # Without the CA the server is not trusted, and the error says so.
        with tasks.Client(zap_addr=zap_tls) as c, \
                pytest.raises(tasks.Unavailable, match="not trusted"):
            c.now("t")


def test_client_certificates_required(ca: Ca, tmp_path: Path) -> None:
    leaf = ca.issue("node")
    user = ca.issue("user")
    stranger = Ca(tmp_path / "other", "other-ca").issue("stranger")
    cfg = tls_config(leaf, **{"tls.client_ca_file": str(ca.ca_file)})
    with TestNode(config=cfg) as node:
        with_cert = ssl.create_default_context(cafile=str(ca.ca_file))
        with_cert.load_cert_chain(str(user.cert), str(user.key))
        assert https_get(node.url + "/healthz", with_cert)[0] == 200
        for cert in (None, stranger):
            ctx = ssl.create_default_context(cafile=str(ca.ca_file))
            if cert is not None:
                ctx.load_cert_chain(str(cert.cert), str(cert.key))
            with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
                https_get(node.url + "/healthz", ctx)
        # ZAP: the same rule; a client with its certificate completes a task.
        with tasks.Client(node.url, handler=lambda t, p: "ok", ca_file=str(ca.ca_file),
                          cert_file=str(user.cert), key_file=str(user.key)) as c:
            assert c.result(c.now("t"), timeout=20) == "ok"
        for kw in ({"zap_addr": f"zaps://{node.zap_addr}"}, {"tasks_url": node.url}):
            with tasks.Client(ca_file=str(ca.ca_file), **kw) as c, \
                    pytest.raises(tasks.Unavailable, match="client certificate"):
                c.now("t")


def test_optional_client_certificates_let_clients_without_one_in(ca: Ca) -> None:
    leaf = ca.issue("node")
    cfg = tls_config(leaf, **{"tls.client_ca_file": str(ca.ca_file), "tls.client_auth": "optional"})
    with TestNode(config=cfg) as node:
        assert https_get(node.url + "/healthz", ssl.create_default_context(cafile=str(ca.ca_file)))[0] == 200


def test_a_changed_certificate_is_served_on_new_connections(ca: Ca) -> None:
    first = ca.issue("node")
    cfg = tls_config(first, **{"tls.reload_interval": "100ms"})
    with TestNode(config=cfg) as node:
        addr = node.url.removeprefix("https://")
        assert served_serial(addr, ca) == first.serial
        assert served_serial(node.zap_addr, ca) == first.serial
        # A connection made before the change keeps working across it.
        host, _, port = addr.rpartition(":")
        ctx = ssl.create_default_context(cafile=str(ca.ca_file))
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw, server_hostname=host) as kept:
            second = ca.issue("node", cert=first.cert, key=first.key)
            wait_until(lambda: served_serial(addr, ca) == second.serial, 10, "the new certificate")
            assert served_serial(node.zap_addr, ca) == second.serial
            kept.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert kept.recv(64).startswith(b"HTTP/1.1 200")
        # A broken replacement is refused: the last good certificate stays.
        files = node.node.tls.api
        failures = files.failures
        first.cert.write_text("not a certificate")
        wait_until(lambda: files.failures > failures, 10, "the failed reload")
        assert served_serial(addr, ca) == second.serial


def test_sighup_reloads_the_certificate(ca: Ca, tmp_path: Path) -> None:
    first = ca.issue("node")
    proc = NodeProcess(tmp_path / "n1", ["--tls-cert-file", str(first.cert), "--tls-key-file", str(first.key),
                                         "--tls-reload-interval", "1h", "--zap", "127.0.0.1:0"])
    try:
        proc.start(ready=False)
        addr = proc.url.removeprefix("http://")
        wait_until(lambda: _serves(addr, ca), 20, "the HTTPS listener")
        assert served_serial(addr, ca) == first.serial
        second = ca.issue("node", cert=first.cert, key=first.key)
        time.sleep(0.2)
        assert served_serial(addr, ca) == first.serial  # no SIGHUP, no file check for an hour
        assert proc.proc is not None
        proc.proc.send_signal(signal.SIGHUP)
        wait_until(lambda: served_serial(addr, ca) == second.serial, 10, "the reloaded certificate")
        assert "TLS reloaded" in proc.log()
    finally:
        assert proc.stop() == 0


def _serves(addr: str, ca: Ca) -> bool:
    with contextlib.suppress(OSError):
        return served_serial(addr, ca) > 0
    return False


def test_tasksctl_takes_a_ca_file(ca: Ca, capsys: pytest.CaptureFixture[str]) -> None:
    leaf = ca.issue("node")
    with TestNode(config=tls_config(leaf)) as node:
        assert tasksctl(["--url", node.url, "--ca-file", str(ca.ca_file), "-o", "json", "ns", "list"]) == 0
        assert "default" in capsys.readouterr().out
        assert tasksctl(["--url", node.url, "ns", "list"]) == 1
        err = capsys.readouterr().err
        assert "not trusted" in err and "--ca-file" in err
        assert tasksctl(["--url", node.url, "--ca-file", "/nonexistent.pem", "ns", "list"]) == 2


def test_tls_keys_come_in_sets(ca: Ca, tmp_path: Path) -> None:
    leaf = ca.issue("node")
    for bad in ({"tls.cert_file": str(leaf.cert)},
                {"tls.client_ca_file": str(ca.ca_file)},
                {"tls.peer_cert_file": str(leaf.cert), "tls.peer_key_file": str(leaf.key)}):
        with pytest.raises(ConfigError):
            config_from_mapping(bad)
    # Files that cannot be used are a startup error naming them.
    junk = tmp_path / "junk.pem"
    junk.write_text("junk")
    cfg = config_from_mapping({**tls_config(leaf), "tls.key_file": str(junk), "data_dir": str(tmp_path / "d")})
    with pytest.raises(ConfigError, match="tls"):
        Node(cfg)
    other = ca.issue("other")
    cfg = config_from_mapping({**tls_config(leaf), "tls.key_file": str(other.key), "data_dir": str(tmp_path / "d")})
    with pytest.raises(ConfigError, match="tls"):
        Node(cfg)
