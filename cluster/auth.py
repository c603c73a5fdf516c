"""Bearer-token authentication and org roles (SPEC §9, §5.13).

Every transport (HTTP, ZAP HELLO, SSE ``?access_token``) hands the raw token to
:meth:`Authenticator.authenticate` and gets back a :class:`Caller`, or an
:class:`AuthFailure` (401) whose ``reason`` labels ``tasks_auth_failures_total``.
Keeping the whole decision in one place is what lets the transports agree on
who the caller is.

Design notes (the "why"):

* Signatures and registered claims are checked by PyJWT only; nothing here
  verifies a signature by hand. ``jwt.decode`` is always called with exactly
  one algorithm, chosen from a fixed allow-list and matched to the key's type,
  so a token cannot pick how its own key is interpreted (HS256 with an RSA
  public key as the "secret", ``alg: none``, ...).
* HS256 uses only the configured secret; JWKS keys (file or URL) serve only
  RS*/PS* (RSA keys) and ES* (EC keys, by curve). ``oct``/``OKP`` JWKs and
  keys marked ``use: enc`` are skipped.
* The JWKS URL is fetched lazily under one :class:`asyncio.Lock`, so a burst
  of requests after start-up or after the TTL causes one fetch, not one per
  request. Old keys keep working for ``jwks_max_stale`` after their TTL while
  the identity provider is down, so a short IdP outage does not log everybody
  out; after that we fail closed (``jwks_unavailable``).
* Key files are read once at construction, so a typo is a startup error and
  not a 401 on the first request.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hanzo_tasks.cluster.config import AuthConfig, ConfigError
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.names import check_org, storage_org
from yarl import URL

log = logging.getLogger("tasks.auth")

ROLES = names.ROLES  # viewer < developer < admin < owner (SPEC §5.13)

MIN_SECRET_BYTES = 32
# Cluster membership is not any org's business: it takes a token with this
# claim set to true (minted by whoever holds a signing key), not an org role.
OPERATOR_CLAIM = "tasks_cluster_admin"
JWKS_FETCH_TIMEOUT = 10.0  # seconds, whole request including the body
JWKS_MAX_BODY = 1 << 20  # 1 MiB
FORCED_REFRESH_INTERVAL = 30.0  # seconds between unknown-kid refreshes
# After a failed fetch, wait this long before the next attempt, so that a
# fast-failing IdP is not hit once per incoming request.
FETCH_RETRY_BACKOFF = 1.0

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_CURVE_ALG = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
_ASYMMETRIC_ALGS = _RSA_ALGS | frozenset(_EC_CURVE_ALG.values())


def role_allows(have: str, need: str) -> bool:
    """True when role ``have`` includes the rights of ``need`` (roles are nested).

    An unknown role on either side allows nothing rather than raising: a
    permission check must never fail open.
    """
    if have not in ROLES or need not in ROLES:
        return False
    return ROLES.index(have) >= ROLES.index(need)


@dataclass(frozen=True)
class Caller:
    """The verified identity of one request or ZAP session."""

    org: str  # the API org: "" = the dev org (auth off), else the validated org claim
    role: str  # org role, one of ROLES
    user: str | None = None  # sub, else preferred_username
    email: str | None = None
    expires_at: float | None = None  # the token's exp (unix seconds); None when auth is off
    operator: bool = False  # the token carries ``tasks_cluster_admin: true`` (cluster membership)

    @property
    def stored_org(self) -> str:
        """The org as storage keys it ("" becomes "_")."""
        return storage_org(self.org)

    def expired(self, now: float | None = None) -> bool:
        """Whether the token's ``exp`` has passed (long-lived ZAP sessions check
        this per request, SPEC §8.3). No leeway: it was applied at sign-in."""
        if self.expires_at is None:
            return False
        return (time.time() if now is None else now) >= self.expires_at


DEV_CALLER = Caller(org="", role=names.OWNER, operator=True)


class AuthFailure(ApiError):
    """401 unauthenticated; .reason is the metric label (tasks_auth_failures_total{reason})."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__("unauthenticated", message)
        self.reason = reason

    def __repr__(self) -> str:
        return f"AuthFailure({self.reason!r}, {self.message!r})"


@dataclass(frozen=True)
class _Key:
    """One usable public key and the algorithms it may verify."""

    kid: str | None
    algs: frozenset[str]
    key: Any  # RSAPublicKey | EllipticCurvePublicKey


def _parse_jwks(doc: Any) -> list[_Key]:
    """The usable RSA/EC keys of a JWKS document; ValueError when there are none.

    Keys PyJWT cannot load (unknown kty, bad parameters) are skipped so that
    one exotic key in a provider's set does not disable the others.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise ValueError('not a JWKS (expected an object with a "keys" list)')
    try:
        jwks = jwt.PyJWKSet.from_dict(doc)
    except jwt.PyJWTError as e:
        raise ValueError(str(e)) from None
    out: list[_Key] = []
    for jwk in jwks:
        if jwk.public_key_use not in (None, "sig"):
            continue
        key = jwk.key
        if isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            key = key.public_key()  # a set with private parts: verify with the public half
        kid = jwk.key_id if isinstance(jwk.key_id, str) else None
        if isinstance(key, rsa.RSAPublicKey):
            out.append(_Key(kid, _RSA_ALGS, key))
        elif isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_CURVE_ALG:
            out.append(_Key(kid, frozenset({_EC_CURVE_ALG[key.curve.name]}), key))
    if not out:
        raise ValueError("the JWKS contains no usable RSA or EC signing key")
    return out


def _fail(reason: str, message: str) -> AuthFailure:
    return AuthFailure(reason, message)


def _map_decode_error(e: jwt.PyJWTError) -> AuthFailure:
    """PyJWT's exception for a token whose signature was checked (or refused)."""
    if isinstance(e, jwt.InvalidSignatureError):
        return _fail("signature", "invalid token signature")
    if isinstance(e, jwt.ExpiredSignatureError):
        return _fail("expired", "token expired")
    if isinstance(e, jwt.ImmatureSignatureError):
        return _fail("not_yet_valid", "token not yet valid")
    if isinstance(e, jwt.InvalidIssuerError):
        return _fail("issuer", "invalid token issuer")
    if isinstance(e, jwt.InvalidAudienceError):
        return _fail("audience", "invalid token audience")
    if isinstance(e, jwt.MissingRequiredClaimError):
        if e.claim == "iss":
            return _fail("issuer", "token has no issuer")
        if e.claim == "aud":
            return _fail("audience", "token has no audience")
        return _fail("claims", f"token lacks the {e.claim!r} claim")
    if isinstance(e, jwt.InvalidAlgorithmError):
        return _fail("algorithm", "token algorithm not accepted")
    if isinstance(e, jwt.InvalidKeyError):  # the key cannot check this token at all
        return _fail("signature", "invalid token signature")
    # The payload was already parsed before any key was tried, so what is left
    # (a non-numeric exp/nbf/iat, a non-string sub or jti, ...) is a bad claim.
    return _fail("claims", "invalid token claims")


class Authenticator:
    """Turns a bearer token into a :class:`Caller` (SPEC §9)."""

    def __init__(
        self,
        cfg: AuthConfig,
        *,
        on_failure: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.enabled: bool = bool(cfg.require_identity)
        self._on_failure = on_failure
        self._clock = clock
        self._secret: bytes | None = None
        self._static: list[_Key] = []
        self._url: str | None = cfg.jwks_url or None
        self._ttl = cfg.jwks_ttl / 1000.0
        self._max_stale = cfg.jwks_max_stale / 1000.0
        self._leeway = cfg.leeway / 1000.0
        # JWKS URL cache; times are self._clock() values.
        self._remote: list[_Key] | None = None
        self._fetched_at: float | None = None
        self._failed_at: float | None = None
        self._forced_at: float | None = None
        self._attempts = 0
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        if self.enabled:
            self._load_static(cfg)

    # ------------------------------------------------------------ startup

    def _load_static(self, cfg: AuthConfig) -> None:
        if not (cfg.hs256_secret_file or cfg.jwks_file or cfg.jwks_url):
            raise ConfigError(
                "auth.require_identity is on but no key source is configured: "
                "set auth.hs256_secret_file, auth.jwks_file or auth.jwks_url",
                "auth.require_identity",
            )
        if cfg.hs256_secret_file:
            key = "auth.hs256_secret_file"
            try:
                with open(cfg.hs256_secret_file, "rb") as f:
                    secret = f.read()
            except OSError as e:
                raise ConfigError(f"{key}: cannot read {cfg.hs256_secret_file}: {e}", key) from None
            # Editors add one trailing newline; strip exactly that, never more,
            # so that the secret's own bytes are used as written.
            if secret.endswith(b"\r\n"):
                secret = secret[:-2]
            elif secret.endswith(b"\n"):
                secret = secret[:-1]
            if len(secret) < MIN_SECRET_BYTES:
                raise ConfigError(
                    f"{key}: the HS256 secret must be at least {MIN_SECRET_BYTES} bytes "
                    f"(got {len(secret)})",
                    key,
                )
            self._secret = secret
        if cfg.jwks_file:
            key = "auth.jwks_file"
            try:
                with open(cfg.jwks_file, "rb") as f:
                    doc = json.loads(f.read())
                self._static = _parse_jwks(doc)
            except OSError as e:
                raise ConfigError(f"{key}: cannot read {cfg.jwks_file}: {e}", key) from None
            except (ValueError, RecursionError) as e:  # includes JSON and UTF-8 errors
                raise ConfigError(f"{key}: {cfg.jwks_file} is not a usable JWKS: {e}", key) from None

    # ------------------------------------------------------------ public API

    async def authenticate(self, token: str | None) -> Caller:
        """The caller behind ``token``; raises :class:`AuthFailure` (401) otherwise."""
        if not self.enabled:
            return DEV_CALLER
        try:
            return await self._authenticate(token)
        except AuthFailure as e:
            if self._on_failure is not None:
                try:
                    self._on_failure(e.reason)
                except Exception:  # a metrics hook must not turn a 401 into a 500
                    log.exception("auth failure hook failed")
            raise

    async def close(self) -> None:
        """Close the HTTP session used for ``auth.jwks_url``, if one was opened."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # ------------------------------------------------------------ token checks

    async def _authenticate(self, token: str | None) -> Caller:
        raw = _strip_scheme(token)
        if not raw:
            raise _fail("missing", "missing bearer token")
        try:
            header = jwt.get_unverified_header(raw)
            # Parse (not verify) the payload up front, so that a DecodeError from
            # the verifying decode below can only mean a bad claim.
            jwt.decode(raw, options={"verify_signature": False})
        except (jwt.PyJWTError, ValueError):  # ValueError: e.g. lone surrogates
            raise _fail("malformed", "malformed token") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _fail("malformed", "malformed token header")
        kid = header.get("kid")  # PyJWT guarantees str or absent
        if alg == "HS256":
            if self._secret is None:
                raise _fail("algorithm", "token algorithm not accepted")
            claims = self._decode(raw, alg, [self._secret])
        elif alg in _ASYMMETRIC_ALGS:
            claims = self._decode(raw, alg, await self._keys_for(alg, kid))
        else:  # "none", HS384, EdDSA, ...: never accepted
            raise _fail("algorithm", "token algorithm not accepted")
        return self._caller(claims)

    def _decode(self, raw: str, alg: str, keys: Sequence[Any]) -> dict[str, Any]:
        """Verify with each candidate key in turn; only a signature mismatch moves on."""
        cfg = self.cfg
        last: jwt.PyJWTError | None = None
        for key in keys:
            try:
                return jwt.decode(
                    raw,
                    key,
                    algorithms=[alg],
                    leeway=self._leeway,
                    issuer=cfg.issuer or None,
                    audience=cfg.audience or None,
                    options={
                        "require": ["exp"],
                        "verify_aud": bool(cfg.audience),
                        "verify_iss": bool(cfg.issuer),
                    },
                )
            except jwt.InvalidSignatureError as e:
                last = e
            except jwt.PyJWTError as e:
                raise _map_decode_error(e) from None
        raise _map_decode_error(last or jwt.InvalidSignatureError())

    def _caller(self, claims: dict[str, Any]) -> Caller:
        cfg = self.cfg
        exp = claims.get("exp")
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise _fail("claims", "token exp must be a number")
        org = claims.get(cfg.org_claim)
        if not isinstance(org, str) or org == "":
            raise _fail("org", f"token has no valid {cfg.org_claim!r} (org) claim")
        try:
            org = check_org(org)
        except ApiError:
            raise _fail("org", f"invalid org in the {cfg.org_claim!r} claim") from None
        if cfg.role_claim in claims:
            role = claims[cfg.role_claim]
            if not isinstance(role, str) or role not in ROLES:
                raise _fail("role", f"invalid role in the {cfg.role_claim!r} claim")
        else:
            role = cfg.default_role
        user = None
        for name in ("sub", "preferred_username"):
            value = claims.get(name)
            if isinstance(value, str) and value:
                user = value
                break
        email = claims.get("email")
        return Caller(
            org=org,
            role=role,
            user=user,
            email=email if isinstance(email, str) and email else None,
            expires_at=float(exp),
            operator=claims.get(OPERATOR_CLAIM) is True,
        )

    # ------------------------------------------------------------ key selection

    async def _keys_for(self, alg: str, kid: str | None) -> list[Any]:
        """Candidate verification keys for an RS/PS/ES token, or an AuthFailure."""
        static = self._static
        if kid is not None:
            named = [k for k in static if k.kid == kid]
            if named:  # the file has it: no need to touch the network
                return _serving(named, alg)
        if self._url is None:
            if not any(alg in k.algs for k in static):
                raise _fail("algorithm", "token algorithm not accepted")
            if kid is not None:
                raise _fail("unknown_key", "unknown signing key")
            return [k.key for k in static if alg in k.algs]

        remote, fetched = await self._remote_keys(force=False)
        if kid is not None and not any(k.kid == kid for k in remote or ()):
            if not fetched:  # a kid we have never seen: maybe the IdP rotated keys
                remote, _ = await self._remote_keys(force=True)
        pool = static + (remote or [])
        if not any(alg in k.algs for k in pool):
            if remote is None:
                raise _fail("jwks_unavailable", "signing keys unavailable")
            raise _fail("algorithm", "token algorithm not accepted")
        if kid is None:
            return [k.key for k in pool if alg in k.algs]
        named = [k for k in pool if k.kid == kid]
        if not named:
            raise _fail("unknown_key", "unknown signing key")
        return _serving(named, alg)

    def _usable(self, now: float) -> list[_Key] | None:
        """Cached URL keys, if not older than ttl + max_stale."""
        if self._remote is None or self._fetched_at is None:
            return None
        if now > self._fetched_at + self._ttl + self._max_stale:
            return None
        return self._remote

    async def _remote_keys(self, *, force: bool) -> tuple[list[_Key] | None, bool]:
        """The URL's keys (fresh, or stale within max_stale), or None if unavailable.

        The second value tells whether a fetch completed during this call, so
        that an unknown kid does not cause a second fetch right after the first.
        """
        now = self._clock()
        fresh = (
            self._remote is not None
            and self._fetched_at is not None
            and now < self._fetched_at + self._ttl
        )
        if fresh and not force:
            return self._remote, False
        if force and self._forced_at is not None and now - self._forced_at < FORCED_REFRESH_INTERVAL:
            return self._usable(now), False
        if self._failed_at is not None and now - self._failed_at < FETCH_RETRY_BACKOFF:
            return self._usable(now), False
        seen = self._attempts
        async with self._lock:
            if self._attempts == seen:  # nobody fetched while we waited for the lock
                if force:
                    self._forced_at = now
                await self._fetch()
        return self._usable(self._clock()), True

    async def _fetch(self) -> None:
        """One GET of the JWKS URL; updates the cache or records the failure."""
        assert self._url is not None
        try:
            async with asyncio.timeout(JWKS_FETCH_TIMEOUT):
                if self._session is None:
                    self._session = aiohttp.ClientSession(
                        timeout=aiohttp.ClientTimeout(total=JWKS_FETCH_TIMEOUT)
                    )
                async with self._session.get(
                    self._url, headers={"Accept": "application/json"}
                ) as resp:
                    if resp.status != 200:
                        raise ValueError(f"HTTP {resp.status}")
                    body = await _read_capped(resp, JWKS_MAX_BODY)
            keys = _parse_jwks(json.loads(body))
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError, RecursionError) as e:
            self._failed_at = self._clock()
            log.warning(
                "JWKS fetch from %s failed: %s", _shown_url(self._url), str(e) or type(e).__name__
            )
        else:
            self._remote = keys
            self._fetched_at = self._clock()
            self._failed_at = None
        # Counted only when the attempt finished: if the task was cancelled
        # mid-fetch, the callers waiting on the lock fetch for themselves.
        self._attempts += 1


def _serving(named: list[_Key], alg: str) -> list[Any]:
    """The keys with the token's kid that can verify its alg."""
    keys = [k.key for k in named if alg in k.algs]
    if not keys:
        raise _fail("algorithm", "token algorithm does not match its key")
    return keys


def _strip_scheme(token: str | None) -> str:
    """``Bearer <jwt>`` (any case) or a bare JWT, without surrounding whitespace."""
    if not isinstance(token, str):
        return ""
    parts = token.strip().split(None, 1)
    if not parts:
        return ""
    if parts[0].lower() == "bearer":
        return parts[1].strip() if len(parts) > 1 else ""
    return token.strip()


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body, reading at most cap + 1 bytes; ValueError if it is longer than cap."""
    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await resp.content.read(cap + 1 - total)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > cap:
            raise ValueError(f"JWKS body larger than {cap} bytes")


def _shown_url(url: str) -> str:
    """The URL for logs, without credentials or query string."""
    try:
        return str(URL(url).with_user(None).with_query(None).with_fragment(None))
    except (ValueError, TypeError):
        return "<jwks_url>"
