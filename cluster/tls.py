"""TLS contexts built from PEM files and reloaded in place.

Why in place: a listener (aiohttp's site, ``asyncio.start_server``) keeps the
``ssl.SSLContext`` object it was started with. ``load_cert_chain`` and
``load_verify_locations`` on that same object apply to every handshake that
begins afterwards, so a renewed certificate (cert-manager rewrites the Secret,
an operator replaces the files and sends SIGHUP) is served without a restart
and without dropping a connection. Connections already established keep the
certificate they were made with.

Why a snapshot: the files are read once into a private temporary file, checked
on a throwaway context, and only then loaded into the live one. A half-written
or mismatched pair therefore never reaches a listener: the old certificate
stays, and the reason is logged. (A CA bundle loaded in place is added to the
trusted set: a CA that is dropped from the file stays trusted until restart.)

Three kinds of context, one class:

* ``server``: HTTPS and ZAP; asks for a client certificate when a client CA is
  given (``required`` or ``optional``);
* ``peer_server`` / ``peer_client``: the two ends of the peer port, mutual TLS;
  both verify the other side against the peer CA. The peer's host name is not
  checked: a peer is identified by the HMAC handshake that runs on top (its
  node id and the cluster secret), and the certificate proves membership of
  the cluster's CA, so one certificate may serve every node (one Secret for a
  StatefulSet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import ssl
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger("tasks.tls")

Role = Literal["server", "peer_server", "peer_client"]
ClientAuth = Literal["required", "optional"]

_Stamp = tuple[int, int, int] | None


def _stamp(path: str) -> _Stamp:
    """What tells a changed file: (inode, size, mtime), following symlinks
    (a Kubernetes Secret volume swaps a ``..data`` symlink on update)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _no_password() -> bytes:
    return b""


class TlsFiles:
    """One ``ssl.SSLContext`` kept in step with its certificate, key and CA files.

    ``context`` is the object to hand to a listener or a dialer; it never
    changes identity. ``reload()`` re-reads the files when they changed (or
    always, with ``force``) and returns whether the context was updated.
    """

    def __init__(
        self,
        role: Role,
        cert_file: str,
        key_file: str,
        ca_file: str | None = None,
        *,
        client_auth: ClientAuth = "required",
    ) -> None:
        if role.startswith("peer") and not ca_file:
            raise ValueError("peer TLS is mutual: it needs a CA file")
        self.role = role
        self.cert_file = cert_file
        self.key_file = key_file
        self.ca_file = ca_file
        self.client_auth = client_auth
        self.reloads = 0
        self.failures = 0
        self.context = self._new_context()
        self._stamps = self._read_stamps()
        self._apply(self.context)  # a bad file here is a startup error

    def _files(self) -> tuple[str, ...]:
        return (self.cert_file, self.key_file) + ((self.ca_file,) if self.ca_file else ())

    def _read_stamps(self) -> tuple[_Stamp, ...]:
        return tuple(_stamp(p) for p in self._files())

    def _new_context(self) -> ssl.SSLContext:
        if self.role == "peer_client":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False  # peers are named by the HMAC hello, not by DNS
            ctx.verify_mode = ssl.CERT_REQUIRED
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            if self.role == "peer_server":
                ctx.verify_mode = ssl.CERT_REQUIRED
            elif self.ca_file:
                ctx.verify_mode = (
                    ssl.CERT_REQUIRED if self.client_auth == "required" else ssl.CERT_OPTIONAL
                )
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        return ctx

    def _apply(self, ctx: ssl.SSLContext) -> None:
        """Load the files into ``ctx`` through a checked snapshot (see the module doc)."""
        with open(self.cert_file, "rb") as f:
            cert = f.read()
        with open(self.key_file, "rb") as f:
            key = f.read()
        ca = None
        if self.ca_file:
            with open(self.ca_file, "rb") as f:
                ca = f.read().decode("ascii", "replace")
        with tempfile.TemporaryDirectory(prefix="tasks-tls-") as tmp:
            pair = os.path.join(tmp, "pair.pem")
            fd = os.open(pair, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(cert.rstrip(b"\n") + b"\n" + key)
            for target in (self._new_context(), ctx):  # a trial first, then the live one
                # An encrypted key gets the empty password and fails, instead of
                # OpenSSL prompting on the terminal of a daemon.
                target.load_cert_chain(pair, password=_no_password)
                if ca is not None:
                    target.load_verify_locations(cadata=ca)

    def changed(self) -> bool:
        return self._read_stamps() != self._stamps

    def reload(self, *, force: bool = False) -> bool:
        """Reload when the files changed (or ``force``); a failure keeps the old
        certificate, logs why, and is tried again at the next change."""
        stamps = self._read_stamps()
        if not force and stamps == self._stamps:
            return False
        self._stamps = stamps
        try:
            self._apply(self.context)
        except (OSError, ssl.SSLError, ValueError) as e:
            self.failures += 1
            log.error("TLS reload (%s) failed, still serving the previous certificate: %s: %s",
                      self.role, self.cert_file, e)
            return False
        self.reloads += 1
        log.info("TLS reloaded (%s) from %s", self.role, self.cert_file)
        return True


@dataclass(frozen=True)
class PeerTls:
    """Both ends of the peer port's mutual TLS."""

    server: TlsFiles
    client: TlsFiles

    @property
    def contexts(self) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        """(listener context, dialer context), as ``PeerMux(tls=)`` takes them."""
        return self.server.context, self.client.context


@dataclass(frozen=True)
class NodeTls:
    """A node's TLS: the API listeners' context and the peer port's (each optional)."""

    api: TlsFiles | None
    peer: PeerTls | None

    @property
    def all(self) -> Sequence[TlsFiles]:
        out = [self.api] if self.api is not None else []
        if self.peer is not None:
            out += [self.peer.server, self.peer.client]
        return out

    def reload(self, *, force: bool = False) -> int:
        """Reload every context whose files changed; the number reloaded."""
        return sum(1 for files in self.all if files.reload(force=force))

    async def watch(self, interval_s: float) -> None:
        """Check the files every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            self.reload()


def node_tls(tls_cfg: Any) -> NodeTls:
    """The contexts a node's ``tls.*`` keys ask for (files read now: a bad file
    is a startup error)."""
    api = None
    if tls_cfg.cert_file:
        api = TlsFiles("server", tls_cfg.cert_file, tls_cfg.key_file, tls_cfg.client_ca_file,
                       client_auth=tls_cfg.client_auth)
    peer = None
    if tls_cfg.peer_cert_file:
        args = (tls_cfg.peer_cert_file, tls_cfg.peer_key_file, tls_cfg.peer_ca_file)
        peer = PeerTls(TlsFiles("peer_server", *args), TlsFiles("peer_client", *args))
    return NodeTls(api, peer)


def on_sighup(loop: asyncio.AbstractEventLoop, reload: Callable[[], Any]) -> Callable[[], None]:
    """Install ``reload`` as the SIGHUP handler (where signals exist); returns its undo."""
    import signal

    sig = getattr(signal, "SIGHUP", None)
    if sig is None:
        return lambda: None
    try:
        loop.add_signal_handler(sig, reload)
    except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
        return lambda: None

    def undo() -> None:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)

    return undo


__all__ = ["ClientAuth", "NodeTls", "PeerTls", "TlsFiles", "node_tls", "on_sighup"]
