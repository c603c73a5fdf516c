"""Mutual TLS on the peer port (docs/tls.md): under the HMAC framing, each end
verifies the other's certificate against the peer CA. The muxes on loopback
show who gets through; three ``tasksd`` processes show a cluster forming and
committing over it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

import pytest
from hanzo_tasks.cluster.tls import PeerTls, TlsFiles
from hanzo_tasks.protocol.channels import RAFT
from hanzo_tasks.replication.raft.transport import PeerMux

from tests.cluster.raft_support import Cluster
from tests.tls_support import Ca, Issued

SECRET = b"s" * 40
pytestmark = pytest.mark.timeout(120)


def peer_tls(leaf: Issued, ca: Ca) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    args = (str(leaf.cert), str(leaf.key), str(ca.ca_file))
    return PeerTls(TlsFiles("peer_server", *args), TlsFiles("peer_client", *args)).contexts


def read_upto(sock: socket.socket, n: int) -> bytes:
    """Up to ``n`` bytes, fewer when the other side closes (or resets, or stays silent 5 s)."""
    data = b""
    sock.settimeout(5)
    while len(data) < n:
        try:
            chunk = sock.recv(n - len(data))
        except (ConnectionResetError, TimeoutError, ssl.SSLError):
            break
        if not chunk:
            break
        data += chunk
    return data


async def _eventually(cond, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        await asyncio.sleep(0.02)
    return cond()


def test_peers_with_certificates_of_the_ca_talk_and_others_are_refused(tmp_path: Path) -> None:
    ca = Ca(tmp_path / "ca")
    other = Ca(tmp_path / "other", "other-ca")
    good = peer_tls(ca.issue("node"), ca)
    # Trusts the cluster's CA (so it would accept the server), but its own
    # certificate comes from another CA: the listener must refuse it.
    foreign = other.issue("intruder")
    rogue = PeerTls(TlsFiles("peer_server", str(foreign.cert), str(foreign.key), str(ca.ca_file)),
                    TlsFiles("peer_client", str(foreign.cert), str(foreign.key), str(ca.ca_file))).contexts

    async def main() -> None:
        got: list[tuple[str, bytes]] = []
        a = PeerMux("a", "127.0.0.1:0", {"b": "127.0.0.1:1", "c": "127.0.0.1:1"}, SECRET,
                    on_frame=lambda p, ch, g, body: got.append((p, body)), tls=good)
        await a.start()
        b = PeerMux("b", "127.0.0.1:0", {"a": a.address}, SECRET, on_frame=lambda *x: None, tls=good)
        c = PeerMux("c", "127.0.0.1:0", {"a": a.address}, SECRET, on_frame=lambda *x: None, tls=rogue)
        plain = PeerMux("c", "127.0.0.1:0", {"a": a.address}, SECRET, on_frame=lambda *x: None)
        await b.start()
        await c.start()
        await plain.start()
        try:
            assert await _eventually(lambda: b.is_connected("a"), 5)
            for _ in range(50):
                b.send("a", RAFT, 1, b"from b")
                c.send("a", RAFT, 1, b"from c")
                plain.send("a", RAFT, 1, b"from plain c")
                await asyncio.sleep(0.02)
            assert ("b", b"from b") in got
            assert all(p == "b" for p, _ in got), got
        finally:
            for m in (a, b, c, plain):
                await m.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_three_nodes_form_and_commit_over_peer_mtls(tmp_path: Path) -> None:
    ca = Ca(tmp_path / "pki")
    leaf = ca.issue("tasks")  # one certificate for every node, as one Secret in Kubernetes
    files = ["--tls-peer-cert-file", str(leaf.cert), "--tls-peer-key-file", str(leaf.key),
             "--tls-peer-ca-file", str(ca.ca_file)]
    cluster = Cluster(tmp_path / "c", n=3, partitions=2, extra=files)
    try:
        cluster.start()
        nodes = list(cluster.nodes.values())
        wid = "over-mtls"
        body = {"workflowId": wid, "requestId": "req-1", "workflowType": {"name": "T"}}
        deadline = time.monotonic() + 30
        status = 0
        while time.monotonic() < deadline:
            status, answer = nodes[0].post("/v1/tasks/namespaces/default/workflows", body, timeout=10)
            if status == 200:
                break
            assert status == 503, answer
            time.sleep(0.2)
        assert status == 200
        for n in nodes:
            deadline = time.monotonic() + 15
            while n.get(f"/v1/tasks/namespaces/default/workflows/{wid}")[0] != 200:
                assert time.monotonic() < deadline, f"{wid} not on {n.data_dir.name}"
                time.sleep(0.05)
        # The peer port speaks TLS: plaintext gets no nonce; a client with the
        # CA and a certificate of it gets the acceptor's 16 bytes.
        host, port = cluster.peer_addrs["n1"].rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as raw:
            raw.sendall(b"\x00" * 16)
            assert len(read_upto(raw, 16)) < 16  # an alert or nothing, never a nonce
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.load_verify_locations(str(ca.ca_file))
        ctx.load_cert_chain(str(leaf.cert), str(leaf.key))
        with socket.create_connection((host, int(port)), timeout=5) as raw, \
                ctx.wrap_socket(raw) as s:
            s.sendall(b"\x00" * 16)
            assert len(read_upto(s, 16)) == 16, "no nonce for a client with a good certificate"
    finally:
        cluster.kill_all()
