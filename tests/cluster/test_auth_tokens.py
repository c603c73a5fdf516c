"""Tests of cluster.auth (SPEC §9, §5.13): real tokens minted with PyJWT, real
RSA/EC keys, key files on disk and a real JWKS HTTP server on loopback.

Time: PyJWT checks exp/nbf/iat against the real clock, so those tokens are
minted relative to time.time(); the JWKS cache runs on an injected clock so
TTL, max_stale and the 30 s refresh limit are tested without sleeping.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hanzo_tasks.cluster.auth import (
    DEV_CALLER,
    ROLES,
    Authenticator,
    AuthFailure,
    Caller,
    role_allows,
)
from hanzo_tasks.cluster.config import AuthConfig, ConfigError
from hanzo_tasks.protocol.errors import ApiError

SECRET = b"s" * 16 + b"0123456789abcdef"  # 32 bytes
assert len(SECRET) == 32

# ------------------------------------------------------------------ helpers


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    """Private keys, generated once for the module (RSA generation is the slow part)."""
    return {
        "rsa_a": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa_b": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "rsa_x": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ec256": ec.generate_private_key(ec.SECP256R1()),
        "ec256b": ec.generate_private_key(ec.SECP256R1()),
        "ec384": ec.generate_private_key(ec.SECP384R1()),
        "ec521": ec.generate_private_key(ec.SECP521R1()),
    }


def jwk(private: Any, kid: str | None = None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key."""
    pub = private.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        d = jwt.algorithms.RSAAlgorithm.to_jwk(pub, as_dict=True)
    else:
        d = jwt.algorithms.ECAlgorithm.to_jwk(pub, as_dict=True)
    if kid is not None:
        d["kid"] = kid
    d.update(extra)
    return d


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    c: dict[str, Any] = {"owner": "acme", "sub": "user-1", "iat": now, "exp": now + 600}
    for k, v in over.items():
        if v is _DROP:
            c.pop(k, None)
        else:
            c[k] = v
    return c


_DROP = object()


def mint(key: Any, alg: str = "HS256", kid: str | None = None, **over: Any) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(claims(**over), key, algorithm=alg, headers=headers)


def b64(obj: Any) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Clock:
    def __init__(self, t: float = 1_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def cfg(**over: Any) -> AuthConfig:
    return dataclasses.replace(AuthConfig(), require_identity=True, **over)


def secret_file(tmp_path: Path, data: bytes = SECRET, name: str = "hs.secret") -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def jwks_file(tmp_path: Path, keys_: list[dict[str, Any]], name: str = "jwks.json") -> str:
    p = tmp_path / name
    p.write_text(json.dumps({"keys": keys_}))
    return str(p)


def run(auth: Authenticator, token: str | None) -> Caller:
    return asyncio.run(auth.authenticate(token))


def fails(auth: Authenticator, token: str | None, reason: str) -> AuthFailure:
    with pytest.raises(AuthFailure) as ei:
        run(auth, token)
    e = ei.value
    assert e.reason == reason, f"expected {reason}, got {e.reason} ({e.message})"
    assert isinstance(e, ApiError)
    assert (e.code, e.status) == ("unauthenticated", 401)
    return e


@pytest.fixture
def hs(tmp_path: Path) -> tuple[Authenticator, Recorder]:
    """An authenticator with only the HS256 secret, recording failures."""
    rec = Recorder()
    return Authenticator(cfg(hs256_secret_file=secret_file(tmp_path)), on_failure=rec), rec


class JwksServer:
    """A real JWKS endpoint on 127.0.0.1 that counts requests and can misbehave."""

    def __init__(self, keys_: list[dict[str, Any]]) -> None:
        self.keys = keys_
        self.requests = 0
        self.mode = "ok"  # ok | fail | notfound | big | exact | garbage
        self.delay = 0.0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        body = json.dumps({"keys": self.keys}).encode()
        if self.mode == "fail":
            return web.Response(status=500, text="boom")
        if self.mode == "notfound":
            return web.json_response({"keys": self.keys}, status=404)
        if self.mode == "garbage":
            return web.Response(body=b"<html>not json</html>", content_type="application/json")
        if self.mode in ("big", "exact"):
            size = (1 << 20) + (1 if self.mode == "big" else 0)
            body = body + b" " * (size - len(body))  # still valid JSON: only the size differs
        return web.Response(body=body, content_type="application/json")

    async def __aenter__(self) -> JwksServer:
        app = web.Application()
        app.router.add_get("/jwks.json", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = self.runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/jwks.json"
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def afails(auth: Authenticator, token: str, reason: str) -> None:
    with pytest.raises(AuthFailure) as ei:
        await auth.authenticate(token)
    assert ei.value.reason == reason, f"expected {reason}, got {ei.value.reason}"


def with_server(
    keys_: list[dict[str, Any]],
    body: Callable[[JwksServer], Awaitable[None]],
) -> None:
    async def main() -> None:
        async with JwksServer(keys_) as server:
            await body(server)

    asyncio.run(main())


# ------------------------------------------------------------------ roles and Caller


def test_roles_table() -> None:
    assert ROLES == ("viewer", "developer", "admin", "owner")
    for i, have in enumerate(ROLES):
        for j, need in enumerate(ROLES):
            assert role_allows(have, need) is (i >= j), (have, need)
    assert role_allows("owner", "viewer") and not role_allows("viewer", "developer")
    assert not role_allows("superuser", "viewer")
    assert not role_allows("owner", "superuser")


def test_caller_expired_and_stored_org() -> None:
    c = Caller(org="acme", role="admin", expires_at=1000.0)
    assert not c.expired(now=999.9)
    assert c.expired(now=1000.0)
    assert c.expired(now=2000.0)
    assert Caller(org="acme", role="admin", expires_at=time.time() - 1).expired()
    assert not Caller(org="acme", role="admin", expires_at=time.time() + 60).expired()
    assert not DEV_CALLER.expired(now=1e12)
    assert c.stored_org == "acme"
    assert DEV_CALLER == Caller(org="", role="owner", operator=True)  # auth off: may do everything
    assert DEV_CALLER.stored_org == "_"


# ------------------------------------------------------------------ auth off


def test_auth_off_returns_dev_caller_for_anything(tmp_path: Path) -> None:
    # Key sources that do not exist: with auth off nothing is read.
    off = dataclasses.replace(
        AuthConfig(),
        hs256_secret_file=str(tmp_path / "nope"),
        jwks_file=str(tmp_path / "nope.json"),
    )
    rec = Recorder()
    auth = Authenticator(off, on_failure=rec)
    assert auth.enabled is False
    for token in (None, "", "garbage", "Bearer x.y.z", mint(SECRET, owner="other")):
        assert run(auth, token) is DEV_CALLER
    assert rec.reasons == []
    asyncio.run(auth.close())


# ------------------------------------------------------------------ startup errors


def test_startup_needs_a_key_source() -> None:
    with pytest.raises(ConfigError) as ei:
        Authenticator(cfg())
    assert ei.value.key == "auth.require_identity"


@pytest.mark.parametrize(
    "data,ok",
    [
        (b"x" * 31, False),
        (b"x" * 31 + b"\n", False),
        (b"x" * 31 + b"\r\n", False),
        (b"", False),
        (b"x" * 32, True),
        (b"x" * 32 + b"\n", True),
        (b"x" * 32 + b"\r\n", True),
    ],
)
def test_startup_secret_length(tmp_path: Path, data: bytes, ok: bool) -> None:
    c = cfg(hs256_secret_file=secret_file(tmp_path, data))
    if ok:
        auth = Authenticator(c)
        assert run(auth, mint(b"x" * 32)).org == "acme"
    else:
        with pytest.raises(ConfigError) as ei:
            Authenticator(c)
        assert ei.value.key == "auth.hs256_secret_file"
        assert "32" in str(ei.value)


def test_startup_strips_only_one_newline(tmp_path: Path) -> None:
    # 31 bytes + "\n\n": one newline is stripped, the other is part of the secret.
    key = b"y" * 31 + b"\n"
    auth = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path, key + b"\n")))
    assert run(auth, mint(key)).org == "acme"
    fails(auth, mint(b"y" * 31 + b"\n\n"), "signature")


def test_startup_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as ei:
        Authenticator(cfg(hs256_secret_file=str(tmp_path / "missing")))
    assert ei.value.key == "auth.hs256_secret_file"
    with pytest.raises(ConfigError) as ei:
        Authenticator(cfg(jwks_file=str(tmp_path / "missing.json")))
    assert ei.value.key == "auth.jwks_file"


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"foo": 1}',
        b'{"keys": []}',
        b'{"keys": "x"}',
        b'{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0c2VjcmV0"}]}',
        b'{"keys": [{"kty": "XYZ"}, 5]}',
        b'{"keys": [{"kty": "RSA", "n": "bad", "e": "AQAB"}]}',
    ],
)
def test_startup_invalid_jwks_file(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "jwks.json"
    p.write_bytes(content)
    with pytest.raises(ConfigError) as ei:
        Authenticator(cfg(jwks_file=str(p)))
    assert ei.value.key == "auth.jwks_file"


def test_startup_does_not_fetch_jwks_url() -> None:
    async def body(server: JwksServer) -> None:
        auth = Authenticator(cfg(jwks_url=server.url))
        assert auth.enabled
        await asyncio.sleep(0.05)
        assert server.requests == 0
        await auth.close()

    with_server([], body)


# ------------------------------------------------------------------ HS256 and token form


def test_valid_hs256_caller(hs: tuple[Authenticator, Recorder]) -> None:
    auth, rec = hs
    exp = int(time.time()) + 600
    c = run(auth, mint(SECRET, exp=exp, tasks_role="developer", email="u@example.com"))
    assert c == Caller(
        org="acme", role="developer", user="user-1", email="u@example.com", expires_at=float(exp)
    )
    assert isinstance(c.expires_at, float)
    assert c.stored_org == "acme"
    assert not c.expired()
    assert rec.reasons == []


def test_only_a_true_cluster_admin_claim_makes_an_operator(hs: tuple[Authenticator, Recorder]) -> None:
    auth, _ = hs
    assert run(auth, mint(SECRET, tasks_cluster_admin=True)).operator is True
    for value in ("true", 1, [True], {"a": True}, False, None):
        assert run(auth, mint(SECRET, tasks_cluster_admin=value)).operator is False, value
    assert run(auth, mint(SECRET)).operator is False


def test_bearer_prefix_and_bare_token(hs: tuple[Authenticator, Recorder]) -> None:
    auth, _ = hs
    t = mint(SECRET)
    for form in (t, f"Bearer {t}", f"bearer {t}", f"  BEARER   {t}  ", f"\t{t}\n"):
        assert run(auth, form).org == "acme", form
    fails(auth, f"Basic {t}", "malformed")


def test_missing_token(hs: tuple[Authenticator, Recorder]) -> None:
    auth, rec = hs
    for token in (None, "", "   ", "Bearer", "Bearer   "):
        fails(auth, token, "missing")
    assert rec.reasons == ["missing"] * 5


def test_malformed_tokens(hs: tuple[Authenticator, Recorder]) -> None:
    auth, rec = hs
    good = mint(SECRET)
    h, p, s = good.split(".")
    bad = [
        "garbage",
        "a.b.c",
        "Bearer not.a.jwt",
        f"{h}.{p}",  # two segments
        f"!!!.{p}.{s}",
        f"{b64(b'not json')}.{p}.{s}",
        f"{b64([1, 2])}.{p}.{s}",  # header not an object
        f"{b64({'alg': 5, 'typ': 'JWT'})}.{p}.{s}",  # alg not a string
        f"{b64({'typ': 'JWT'})}.{p}.{s}",  # no alg
        f"{b64({'alg': 'HS256', 'kid': 7})}.{p}.{s}",  # kid not a string
        f"{b64({'alg': 'HS256', 'crit': ['x-unknown'], 'x-unknown': 1})}.{p}.{s}",
        f"{h}.{b64(b'not json')}.{s}",
        f"{h}.{b64([1])}.{s}",  # payload not an object
        "\ud800.x.y",
    ]
    for token in bad:
        fails(auth, token, "malformed")
    # A correctly signed token whose payload is not JSON is still malformed.
    signed = jwt.api_jws.encode(b"not json", SECRET, algorithm="HS256")
    fails(auth, signed, "malformed")
    assert rec.reasons == ["malformed"] * (len(bad) + 1)


def test_alg_none_and_unknown_algs_rejected(hs: tuple[Authenticator, Recorder]) -> None:
    auth, _ = hs
    none = jwt.encode(claims(), None, algorithm="none")
    assert jwt.get_unverified_header(none)["alg"] == "none"
    fails(auth, none, "algorithm")
    h, p, s = mint(SECRET).split(".")
    for alg in ("None", "NONE", "", "HS512x"):
        fails(auth, f"{b64({'alg': alg, 'typ': 'JWT'})}.{p}.", "algorithm")
    # HS384/HS512 are never accepted.
    fails(auth, mint(SECRET * 2, alg="HS384"), "algorithm")
    fails(auth, mint(SECRET * 2, alg="HS512"), "algorithm")


def test_wrong_secret_and_tampering(hs: tuple[Authenticator, Recorder]) -> None:
    auth, rec = hs
    fails(auth, mint(b"z" * 32), "signature")
    h, _, s = mint(SECRET).split(".")
    forged = b64(claims(owner="other-org"))
    fails(auth, f"{h}.{forged}.{s}", "signature")
    fails(auth, f"{h}.{forged}.", "signature")
    assert rec.reasons == ["signature"] * 3


def test_rs256_with_only_hs256_configured(hs: tuple[Authenticator, Recorder], keys) -> None:
    auth, _ = hs
    fails(auth, mint(keys["rsa_a"], alg="RS256"), "algorithm")
    fails(auth, mint(keys["ec256"], alg="ES256", kid="k"), "algorithm")


def test_hs256_with_only_jwks_configured(tmp_path: Path, keys) -> None:
    # An oct key in the JWKS must not enable HS256 either.
    oct_key = {"kty": "oct", "kid": "o", "k": b64(SECRET)}
    path = jwks_file(tmp_path, [jwk(keys["rsa_a"], "a"), oct_key])
    auth = Authenticator(cfg(jwks_file=path))
    assert run(auth, mint(keys["rsa_a"], alg="RS256", kid="a")).org == "acme"
    fails(auth, mint(SECRET), "algorithm")
    fails(auth, mint(SECRET, kid="o"), "algorithm")
    # HS256 "signed" with the RSA public key's PEM as the secret (key confusion);
    # PyJWT refuses to mint this, so build it by hand.
    pem = (
        keys["rsa_a"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = b64({"alg": "HS256", "typ": "JWT", "kid": "a"})
    payload = b64(claims())
    sig = hmac.new(pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    forged = f"{header}.{payload}.{b64(sig)}"
    fails(auth, forged, "algorithm")


# ------------------------------------------------------------------ registered claims


def test_expiry_and_leeway(hs: tuple[Authenticator, Recorder]) -> None:
    auth, rec = hs  # default leeway 60 s
    now = int(time.time())
    fails(auth, mint(SECRET, exp=now - 120), "expired")
    c = run(auth, mint(SECRET, exp=now - 30))
    assert c.expires_at == float(now - 30)
    assert c.expired()
    assert rec.reasons == ["expired"]
    strict = Authenticator(dataclasses.replace(auth.cfg, leeway=0))
    fails(strict, mint(SECRET, exp=now - 30), "expired")


def test_not_yet_valid(hs: tuple[Authenticator, Recorder]) -> None:
    auth, _ = hs
    now = int(time.time())
    fails(auth, mint(SECRET, nbf=now + 300), "not_yet_valid")
    fails(auth, mint(SECRET, iat=now + 300), "not_yet_valid")
    assert run(auth, mint(SECRET, nbf=now + 30, iat=now + 30)).org == "acme"  # within leeway


def test_claims_failures(hs: tuple[Authenticator, Recorder]) -> None:
    auth, rec = hs
    now = int(time.time())
    cases = [
        mint(SECRET, exp=_DROP),
        mint(SECRET, exp=None),
        mint(SECRET, exp="soon"),
        mint(SECRET, exp=str(now + 600)),  # a string, even a numeric one
        mint(SECRET, nbf="later"),
        mint(SECRET, iat="earlier"),
        mint(SECRET, sub=42),
    ]
    for token in cases:
        fails(auth, token, "claims")
    assert rec.reasons == ["claims"] * len(cases)
    assert run(auth, mint(SECRET, exp=now + 600.5)).expires_at == now + 600.5


def test_issuer_and_audience(tmp_path: Path) -> None:
    auth = Authenticator(
        cfg(hs256_secret_file=secret_file(tmp_path), issuer="https://idp.example", audience="tasks")
    )
    iss = "https://idp.example"
    assert run(auth, mint(SECRET, iss=iss, aud="tasks")).org == "acme"
    assert run(auth, mint(SECRET, iss=iss, aud=["other", "tasks"])).org == "acme"
    fails(auth, mint(SECRET, iss="https://evil.example", aud="tasks"), "issuer")
    fails(auth, mint(SECRET, aud="tasks"), "issuer")  # iss missing
    fails(auth, mint(SECRET, iss=iss, aud="other"), "audience")
    fails(auth, mint(SECRET, iss=iss, aud=["other", "more"]), "audience")
    fails(auth, mint(SECRET, iss=iss), "audience")  # aud missing
    # Neither configured: iss and aud are not checked.
    plain = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path)))
    assert run(plain, mint(SECRET, iss="anything", aud="whatever")).org == "acme"


# ------------------------------------------------------------------ org, role, user


@pytest.mark.parametrize("org", [_DROP, "", "_", "../x", "a/b", ".", "..", "a" * 65, 123, None, ["acme"], "a b"])
def test_bad_org_claim(hs: tuple[Authenticator, Recorder], org: Any) -> None:
    auth, rec = hs
    e = fails(auth, mint(SECRET, owner=org), "org")
    assert "org" in e.message
    assert rec.reasons == ["org"]


def test_good_org_claims(tmp_path: Path) -> None:
    auth = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path)))
    for org in ("a" * 64, "Acme-1.prod_x", "x"):
        assert run(auth, mint(SECRET, owner=org)).org == org
    custom = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path), org_claim="org_id"))
    assert run(custom, mint(SECRET, owner=_DROP, org_id="beta")).org == "beta"
    fails(custom, mint(SECRET), "org")  # "owner" is no longer the org claim


def test_role_claim(tmp_path: Path) -> None:
    auth = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path), default_role="viewer"))
    for role in ROLES:
        assert run(auth, mint(SECRET, tasks_role=role)).role == role
    assert run(auth, mint(SECRET)).role == "viewer"  # no claim: default_role
    for bad in ("superuser", "Owner", "", 3, None, ["owner"]):
        fails(auth, mint(SECRET, tasks_role=bad), "role")
    custom = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path), role_claim="r"))
    assert run(custom, mint(SECRET, r="admin", tasks_role="viewer")).role == "admin"
    assert run(custom, mint(SECRET, tasks_role="superuser")).role == "owner"  # ignored claim


def test_user_and_email(hs: tuple[Authenticator, Recorder]) -> None:
    auth, _ = hs
    c = run(auth, mint(SECRET, sub=_DROP, preferred_username="alice", email=["x"]))
    assert (c.user, c.email) == ("alice", None)
    c = run(auth, mint(SECRET, sub="s-1", preferred_username="alice", email="a@x.io"))
    assert (c.user, c.email) == ("s-1", "a@x.io")
    c = run(auth, mint(SECRET, sub=_DROP, preferred_username=7))
    assert (c.user, c.email) == (None, None)


def test_on_failure_once_per_failure_and_hook_errors(tmp_path: Path) -> None:
    rec = Recorder()
    auth = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path)), on_failure=rec)
    run(auth, mint(SECRET))
    fails(auth, None, "missing")
    fails(auth, "x", "malformed")
    run(auth, mint(SECRET))
    fails(auth, mint(SECRET, exp=int(time.time()) - 3600), "expired")
    assert rec.reasons == ["missing", "malformed", "expired"]

    def broken(reason: str) -> None:
        raise RuntimeError("metrics down")

    auth2 = Authenticator(cfg(hs256_secret_file=secret_file(tmp_path)), on_failure=broken)
    fails(auth2, "x", "malformed")  # still a 401, not a RuntimeError


# ------------------------------------------------------------------ JWKS file


def test_jwks_file_algorithms(tmp_path: Path, keys) -> None:
    path = jwks_file(
        tmp_path,
        [
            jwk(keys["rsa_a"], "rsa"),
            jwk(keys["ec256"], "p256"),
            jwk(keys["ec384"], "p384"),
            jwk(keys["ec521"], "p521"),
        ],
    )
    auth = Authenticator(cfg(jwks_file=path))
    for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"):
        assert run(auth, mint(keys["rsa_a"], alg=alg, kid="rsa")).org == "acme", alg
        assert run(auth, mint(keys["rsa_a"], alg=alg)).org == "acme", alg  # no kid
    assert run(auth, mint(keys["ec256"], alg="ES256", kid="p256")).user == "user-1"
    assert run(auth, mint(keys["ec384"], alg="ES384", kid="p384")).user == "user-1"
    assert run(auth, mint(keys["ec521"], alg="ES512", kid="p521")).user == "user-1"
    assert run(auth, mint(keys["ec384"], alg="ES384")).user == "user-1"  # no kid
    # A kid naming a key of the wrong type or curve for the alg.
    fails(auth, mint(keys["ec256"], alg="ES256", kid="p384"), "algorithm")
    fails(auth, mint(keys["rsa_a"], alg="RS256", kid="p256"), "algorithm")
    # HS256 is never served by JWKS keys; EdDSA/ES256K are not accepted at all.
    fails(auth, mint(SECRET), "algorithm")


def test_jwks_file_alg_without_key(tmp_path: Path, keys) -> None:
    auth = Authenticator(cfg(jwks_file=jwks_file(tmp_path, [jwk(keys["ec384"], "p384")])))
    fails(auth, mint(keys["ec256"], alg="ES256"), "algorithm")
    fails(auth, mint(keys["ec256"], alg="ES256", kid="p384"), "algorithm")
    fails(auth, mint(keys["rsa_a"], alg="RS256"), "algorithm")
    fails(auth, mint(keys["rsa_a"], alg="PS256", kid="zz"), "algorithm")


def test_kid_selects_key_and_no_kid_tries_all(tmp_path: Path, keys) -> None:
    rec = Recorder()
    path = jwks_file(
        tmp_path,
        [jwk(keys["rsa_a"], "a"), jwk(keys["rsa_b"], "b"), jwk(keys["ec256"], "e")],
    )
    auth = Authenticator(cfg(jwks_file=path), on_failure=rec)
    assert run(auth, mint(keys["rsa_b"], alg="RS256", kid="b", sub="bob")).user == "bob"
    assert run(auth, mint(keys["rsa_a"], alg="RS256", kid="a", sub="al")).user == "al"
    # No kid: every RSA key is tried, the second one matches.
    assert run(auth, mint(keys["rsa_b"], alg="RS256", sub="nokid")).user == "nokid"
    # The kid selects key "a", so a token signed by "b" fails even though "b" is known.
    fails(auth, mint(keys["rsa_b"], alg="RS256", kid="a"), "signature")
    # Signed by a key nobody has.
    fails(auth, mint(keys["rsa_x"], alg="RS256"), "signature")
    fails(auth, mint(keys["rsa_x"], alg="RS256", kid="x"), "unknown_key")
    fails(auth, mint(keys["ec256b"], alg="ES256"), "signature")
    # The signature is checked before the claims: a forged expired token is "signature".
    fails(auth, mint(keys["rsa_x"], alg="RS256", kid="a", exp=1), "signature")
    fails(auth, mint(keys["rsa_a"], alg="RS256", kid="a", exp=1), "expired")
    assert rec.reasons == ["signature", "signature", "unknown_key", "signature", "signature", "expired"]


def test_jwks_file_skips_unusable_keys(tmp_path: Path, keys) -> None:
    entries = [
        {"kty": "XYZ", "kid": "weird"},
        {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(b"\x01" * 32)},
        {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": b64(b"\x01" * 32), "y": b64(b"\x02" * 32)},
        jwk(keys["rsa_b"], "enc", use="enc"),
        "not an object",
        jwk(keys["rsa_a"], "good", use="sig"),
        jwk(keys["ec256"], "good-ec", alg="ES256"),
    ]
    auth = Authenticator(cfg(jwks_file=jwks_file(tmp_path, entries)))  # type: ignore[list-item]
    assert run(auth, mint(keys["rsa_a"], alg="RS256", kid="good")).org == "acme"
    assert run(auth, mint(keys["ec256"], alg="ES256", kid="good-ec")).org == "acme"
    fails(auth, mint(keys["rsa_b"], alg="RS256", kid="enc"), "unknown_key")  # encryption key
    fails(auth, mint(keys["rsa_b"], alg="RS256"), "signature")


def test_jwks_with_private_parts_verifies_with_public_half(tmp_path: Path, keys) -> None:
    full = jwt.algorithms.RSAAlgorithm.to_jwk(keys["rsa_a"], as_dict=True)
    full["kid"] = "p"
    assert "d" in full
    auth = Authenticator(cfg(jwks_file=jwks_file(tmp_path, [full])))
    assert run(auth, mint(keys["rsa_a"], alg="RS256", kid="p")).org == "acme"
    fails(auth, mint(keys["rsa_b"], alg="RS256", kid="p"), "signature")


# ------------------------------------------------------------------ JWKS URL


def test_jwks_url_lazy_cached_and_refetched_after_ttl(tmp_path: Path, keys) -> None:
    clock = Clock()

    async def body(server: JwksServer) -> None:
        auth = Authenticator(
            cfg(jwks_url=server.url, hs256_secret_file=secret_file(tmp_path), jwks_ttl=60_000),
            clock=clock,
        )
        await auth.authenticate(mint(SECRET))  # HS256 never touches the URL
        assert server.requests == 0
        c = await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="a"))
        assert c.org == "acme"
        assert server.requests == 1
        for _ in range(10):
            await auth.authenticate(mint(keys["rsa_a"], alg="PS256", kid="a"))
            await auth.authenticate(mint(keys["rsa_a"], alg="RS256"))
        clock.t += 59
        await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="a"))
        assert server.requests == 1
        clock.t += 2  # past the TTL
        await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="a"))
        assert server.requests == 2
        await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="a"))
        assert server.requests == 2
        await auth.close()

    with_server([jwk(keys["rsa_a"], "a")], body)


def test_jwks_url_concurrent_first_use_fetches_once(keys) -> None:
    async def body(server: JwksServer) -> None:
        server.delay = 0.1
        auth = Authenticator(cfg(jwks_url=server.url))
        tokens = [mint(keys["ec256"], alg="ES256", kid="e", sub=f"u{i}") for i in range(20)]
        callers = await asyncio.gather(*(auth.authenticate(t) for t in tokens))
        assert [c.user for c in callers] == [f"u{i}" for i in range(20)]
        assert server.requests == 1
        await auth.close()

    with_server([jwk(keys["ec256"], "e")], body)


def test_jwks_url_unknown_kid_refresh_limited(keys) -> None:
    clock = Clock()
    rec = Recorder()

    async def body(server: JwksServer) -> None:
        auth = Authenticator(cfg(jwks_url=server.url), clock=clock, on_failure=rec)
        # First use with an unknown kid: one fetch, not a fetch plus a forced refresh.
        await afails(auth, mint(keys["rsa_x"], alg="RS256", kid="nope"), "unknown_key")
        assert server.requests == 1
        await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="a"))
        assert server.requests == 1
        await afails(auth, mint(keys["rsa_x"], alg="RS256", kid="nope"), "unknown_key")
        assert server.requests == 2  # forced refresh
        for _ in range(5):
            clock.t += 5
            await afails(auth, mint(keys["rsa_x"], alg="RS256", kid="nope2"), "unknown_key")
        assert server.requests == 2  # at most one per 30 s
        clock.t += 6  # 31 s after the forced refresh
        await afails(auth, mint(keys["rsa_x"], alg="RS256", kid="nope"), "unknown_key")
        assert server.requests == 3
        # A token signed by an unknown key with no kid is a signature failure, no refresh.
        clock.t += 31
        await afails(auth, mint(keys["rsa_x"], alg="RS256"), "signature")
        assert server.requests == 3
        await auth.close()

    with_server([jwk(keys["rsa_a"], "a")], body)
    assert rec.reasons == ["unknown_key"] * 8 + ["signature"]


def test_jwks_url_rotation_picked_up_by_unknown_kid(keys) -> None:
    clock = Clock()

    async def body(server: JwksServer) -> None:
        auth = Authenticator(cfg(jwks_url=server.url), clock=clock)
        assert (await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="k1"))).org == "acme"
        assert server.requests == 1
        server.keys = [jwk(keys["rsa_b"], "k2"), jwk(keys["ec256"], "k3")]  # the IdP rotates
        clock.t += 1  # well within the TTL
        c = await auth.authenticate(mint(keys["rsa_b"], alg="RS256", kid="k2", sub="new"))
        assert c.user == "new"
        assert server.requests == 2
        assert (await auth.authenticate(mint(keys["ec256"], alg="ES256", kid="k3"))).org == "acme"
        # The old key is gone from the cache now, and another refresh is not due.
        await afails(auth, mint(keys["rsa_a"], alg="RS256", kid="k1"), "unknown_key")
        assert server.requests == 2
        await auth.close()

    with_server([jwk(keys["rsa_a"], "k1")], body)


def test_jwks_url_failure_uses_stale_keys_within_max_stale(keys, caplog) -> None:
    clock = Clock()
    rec = Recorder()
    caplog.set_level(logging.WARNING, logger="tasks.auth")
    token = mint(keys["rsa_a"], alg="RS256", kid="a")

    async def body(server: JwksServer) -> None:
        auth = Authenticator(
            cfg(jwks_url=server.url, jwks_ttl=60_000, jwks_max_stale=120_000),
            clock=clock,
            on_failure=rec,
        )
        t0 = clock.t
        await auth.authenticate(token)
        assert server.requests == 1
        server.mode = "fail"
        clock.t = t0 + 61  # TTL expired: refetch fails, old keys still used
        assert (await auth.authenticate(token)).org == "acme"
        assert server.requests == 2
        clock.t += 0.5  # right after a failure: no new attempt
        assert (await auth.authenticate(token)).org == "acme"
        assert server.requests == 2
        clock.t = t0 + 60 + 119  # still within max_stale
        assert (await auth.authenticate(token)).org == "acme"
        assert server.requests == 3
        clock.t = t0 + 60 + 121  # beyond ttl + max_stale
        await afails(auth, token, "jwks_unavailable")
        assert server.requests == 4
        clock.t += 0.5
        await afails(auth, mint(keys["rsa_a"], alg="RS256"), "jwks_unavailable")
        assert server.requests == 4
        server.mode = "ok"  # the IdP recovers
        clock.t += 2
        assert (await auth.authenticate(token)).org == "acme"
        assert server.requests == 5
        await auth.close()

    with_server([jwk(keys["rsa_a"], "a")], body)
    assert rec.reasons == ["jwks_unavailable"] * 2
    warnings = [r for r in caplog.records if r.name == "tasks.auth" and r.levelno == logging.WARNING]
    assert len(warnings) == 3 and all("JWKS fetch" in r.getMessage() for r in warnings)
    assert all(token not in r.getMessage() for r in caplog.records)
    assert "HTTP 500" in warnings[0].getMessage()


@pytest.mark.parametrize("mode", ["fail", "notfound", "big", "garbage"])
def test_jwks_url_bad_responses(keys, mode: str) -> None:
    async def body(server: JwksServer) -> None:
        server.mode = mode
        auth = Authenticator(cfg(jwks_url=server.url))
        await afails(auth, mint(keys["rsa_a"], alg="RS256", kid="a"), "jwks_unavailable")
        assert server.requests == 1
        await auth.close()

    with_server([jwk(keys["rsa_a"], "a")], body)


def test_jwks_url_body_of_exactly_one_mib_is_accepted(keys) -> None:
    async def body(server: JwksServer) -> None:
        server.mode = "exact"
        auth = Authenticator(cfg(jwks_url=server.url))
        assert (await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="a"))).org == "acme"
        await auth.close()

    with_server([jwk(keys["rsa_a"], "a")], body)


def test_jwks_url_unreachable(keys) -> None:
    async def main() -> None:
        async with JwksServer([]) as server:
            url = server.url
        # The server is gone: connection refused.
        auth = Authenticator(cfg(jwks_url=url))
        await afails(auth, mint(keys["rsa_a"], alg="RS256", kid="a"), "jwks_unavailable")
        await auth.close()
        await auth.close()  # idempotent

    asyncio.run(main())


def test_jwks_file_and_url_together(tmp_path: Path, keys) -> None:
    clock = Clock()

    async def body(server: JwksServer) -> None:
        path = jwks_file(tmp_path, [jwk(keys["ec256"], "file-ec")])
        auth = Authenticator(cfg(jwks_file=path, jwks_url=server.url), clock=clock)
        # A kid found in the file needs no fetch.
        assert (await auth.authenticate(mint(keys["ec256"], alg="ES256", kid="file-ec"))).org
        assert server.requests == 0
        # Keys from both sources serve a token without kid.
        assert (await auth.authenticate(mint(keys["rsa_a"], alg="RS256", kid="url-rsa"))).org
        assert (await auth.authenticate(mint(keys["ec256"], alg="ES256"))).org
        assert server.requests == 1
        # The URL fails for good: the file's keys keep working, URL-only algs do not.
        server.mode = "fail"
        clock.t += 10_000
        assert (await auth.authenticate(mint(keys["ec256"], alg="ES256"))).org
        clock.t += 2
        await afails(auth, mint(keys["rsa_a"], alg="RS256", kid="url-rsa"), "jwks_unavailable")
        clock.t += 2
        await afails(auth, mint(keys["ec256b"], alg="ES256"), "signature")
        await auth.close()

    with_server([jwk(keys["rsa_a"], "url-rsa")], body)


def test_jwks_url_without_keys_for_alg(keys) -> None:
    async def body(server: JwksServer) -> None:
        auth = Authenticator(cfg(jwks_url=server.url))
        await afails(auth, mint(keys["ec384"], alg="ES384"), "algorithm")
        await afails(auth, mint(SECRET), "algorithm")
        assert server.requests == 1
        await auth.close()

    with_server([jwk(keys["ec256"], "e")], body)
