"""Task tokens (SPEC §1): ``tt1.<payload>.<mac>``.

payload = base64url (unpadded) of msgpack ``[kind, org, ns, id, runId,
scheduledEventId, attempt, nonce]``; mac = base64url of the first 16 bytes of
HMAC-SHA256(K, payload as it appears in the token), K = HMAC-SHA256(secret,
"tasks-token-v1"). The secret is the cluster secret, or ``node.secret`` on a
single node. Verification is constant-time and never unpickles anything.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass

import msgpack
from hanzo_tasks.protocol.errors import ApiError

MAX_TOKEN = 1024


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@dataclass(frozen=True)
class TaskToken:
    kind: str
    org: str
    ns: str
    wid: str
    rid: str
    scheduled_event_id: int
    attempt: int
    nonce: str


class Tokens:
    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, b"tasks-token-v1", hashlib.sha256).digest()

    def _mac(self, payload: str) -> str:
        return _b64(hmac.new(self._key, payload.encode(), hashlib.sha256).digest()[:16])

    def make(self, t: TaskToken) -> str:
        raw = msgpack.packb(
            [t.kind, t.org, t.ns, t.wid, t.rid, t.scheduled_event_id, t.attempt, t.nonce], use_bin_type=True
        )
        payload = _b64(raw)
        return f"tt1.{payload}.{self._mac(payload)}"

    def read(self, token: object) -> TaskToken:
        bad = ApiError("invalid_argument", "invalid task token")
        if not isinstance(token, str) or len(token) > MAX_TOKEN:
            raise bad
        parts = token.split(".")
        if len(parts) != 3 or parts[0] != "tt1":
            raise bad
        _, payload, mac = parts
        if not hmac.compare_digest(self._mac(payload), mac):
            raise bad
        try:
            fields = msgpack.unpackb(_unb64(payload), raw=False)
            kind, org, ns, wid, rid, seid, attempt, nonce = fields
        except Exception:
            raise bad from None
        if not all(isinstance(x, str) for x in (kind, org, ns, wid, rid, nonce)) or not all(
            isinstance(x, int) for x in (seid, attempt)
        ):
            raise bad
        return TaskToken(kind, org, ns, wid, rid, seid, attempt, nonce)
