"""Namespaces, their search attributes and their identities (SPEC §4.2, §4.7, §5.13):
registering, updating and listing namespaces, the search-attribute registry that
workflows' attributes are checked against, and the org roles granted per namespace.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service.forwarding import Concept, routed
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.timefmt import parse_time
from hanzo_tasks.shard import reads

log = logging.getLogger("tasks.service")

Json = dict[str, Any]


class Namespaces(Concept):
    """Namespaces, their search attributes and their identities: the namespaces half of a node's service."""

    attr = "namespaces"

    def __init__(self, svc: Any) -> None:
        super().__init__(svc)
        self._roles: dict[tuple[str, str, str], tuple[float, str | None]] = {}  # role_in's cache
        svc.replicator.subscribe(self._on_apply)

    def _on_apply(self, group: int, index: int, result: Json) -> None:
        for ev in result.get("_events", ()):
            if ev["kind"] == "identity.changed":  # replicas see a grant at once; other nodes within ROLE_CACHE_S
                self._roles.pop((ev["org"], ev["namespace"], ev["email"]), None)

    def _ns_fields(self, body: Json, *, create: bool) -> Json:
        out: Json = {}
        for f in ("description", "ownerEmail", "historyArchivalState", "historyArchivalUri",
                  "visibilityArchivalState", "visibilityArchivalUri"):
            v = I.opt_str(body, f)
            if v is not None:
                out[f] = v
        if out.get("ownerEmail"):
            out["ownerEmail"] = names.check_email(out["ownerEmail"])
        retention = I.opt_duration(body, "retention", lo_ms=1000)
        if retention is None:
            retention = I.opt_duration(body, "workflowExecutionRetentionTtl", lo_ms=1000)
        if retention is not None:
            out["retention"] = retention
        aps = I.opt_int(body, "apsLimit", lo=0)
        if aps is not None:
            out["apsLimit"] = aps
        cd = I.opt_obj(body, "customData")
        if cd is not None:
            if not all(isinstance(v, str) for v in cd.values()):
                raise I.bad("customData values must be strings")
            out["customData"] = cd
        return out

    def _check_ns_writes(self) -> None:
        if self.svc.cfg.settings.namespace_write_disabled:
            raise ApiError("permission_denied", "namespace writes are disabled")

    async def register_namespace(self, org: str, body: Json) -> Json:
        self._check_ns_writes()
        info = I.opt_obj(body, "namespaceInfo") or {}
        name = info.get("name", body.get("name"))
        if name is None:
            raise I.bad("namespaceInfo.name is required")
        ns = names.check_namespace(name)
        return await self.register_namespace_in(org, ns, body)

    @routed
    async def register_namespace_in(self, org: str, ns: str, body: Json) -> Json:
        info = I.opt_obj(body, "namespaceInfo") or {}
        fields = self._ns_fields(info, create=True)
        cfg = I.opt_obj(body, "config") or {}
        fields.update(self._ns_fields(cfg, create=True))
        res = await self.svc.propose(org, ns, "ns.register", region=self.svc.cfg.region, **fields)
        return render.namespace(res["namespace"])

    @routed
    async def update_namespace(self, org: str, ns: str, body: Json) -> Json:
        self._check_ns_writes()
        names.check_namespace(ns)
        await self.svc.ensure_namespace(org, ns)
        res = await self.svc.propose(org, ns, "ns.update", **self._ns_fields(body, create=False))
        return render.namespace(res["namespace"])

    @routed
    async def delete_namespace(self, org: str, ns: str) -> Json:
        self._check_ns_writes()
        names.check_namespace(ns)
        await self.svc.ensure_namespace(org, ns)
        res = await self.svc.propose(org, ns, "ns.delete")
        return render.namespace(res["namespace"])

    @routed
    async def get_namespace(self, org: str, ns: str) -> Json:
        names.check_namespace(ns)
        await self.svc.ensure_namespace(org, ns)
        with self.svc.read_txn(org, ns) as txn:
            rec = reads.namespace(txn, org, ns)
        if rec is None:
            raise ApiError("not_found", f"namespace {ns} not found")
        return render.namespace(rec)

    async def list_namespaces(self, org: str, size: int, token: str | None) -> Json:
        await self.svc.ensure_namespace(org, self.svc.default_namespace)
        after = I.read_token(token, "namespaces", org)
        all_names: list[str] = []
        for p in range(self.svc.replicator.partitions):
            if self.svc.replicator.is_local(p):
                with self.svc.replicator.store(p).read() as txn:
                    all_names.extend(reads.namespace_names(txn, org))
            elif self.svc.forwarder is not None:
                all_names.extend(await self.svc.forwarder.call(p, "nsnames", {"org": org, "p": p}))
        all_names = sorted(set(all_names))  # a moving namespace is in two partitions for a moment
        if after is not None:
            all_names = [n for n in all_names if n.encode() > after]
        page = all_names[:size]
        out = []
        for n in page:
            rec = await self.svc.read(org, n, "namespace")
            if rec is not None:
                out.append(render.namespace(rec))
        more = len(all_names) > size
        return {
            "namespaces": out,
            "nextPageToken": I.make_token("namespaces", org, page[-1].encode() if more else None),
        }

    @routed
    async def add_search_attribute(self, org: str, ns: str, body: Json) -> Json:
        await self.svc.prepare(org, ns)
        name = names.check_attr_name(body.get("name"))
        if name in RESERVED_ATTRS or name.startswith("Temporal"):
            raise I.bad(f"search attribute name {name} is reserved")
        typ = body.get("type")
        if typ not in ATTR_TYPES:
            raise I.bad(f"type must be one of {', '.join(ATTR_TYPES)}")
        await self.svc.propose(org, ns, "sa.add", name=name, type=typ)
        return {"name": name, "type": typ}

    @routed
    async def remove_search_attribute(self, org: str, ns: str, name: str) -> Json:
        await self.svc.prepare(org, ns)
        names.check_attr_name(name)
        await self.svc.propose(org, ns, "sa.remove", name=name)
        return {"status": "removed"}

    @routed
    async def list_search_attributes(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        bound = f"{org}/{ns}"
        after = I.read_token(token, "attrs", bound)
        with self.svc.read_txn(org, ns) as txn:
            attrs = sorted(reads.search_attrs(txn, org, ns).items())
        if after is not None:
            attrs = [a for a in attrs if a[0].encode() > after]
        page = attrs[:size]
        more = len(attrs) > size
        return {
            "searchAttributes": [{"name": n, "type": t} for n, t in page],
            "nextPageToken": I.make_token("attrs", bound, page[-1][0].encode() if more else None),
        }

    @routed
    async def list_identities(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        with self.svc.read_txn(org, ns) as txn:
            page, nxt = I.name_page(lambda after, n: reads.identities(txn, org, ns, after, n), token,
                                    "identities", f"{org}/{ns}", size, lambda i: i["email"])
        return {"identities": [render.identity(i) for i in page], "nextPageToken": nxt}

    @routed
    async def grant_identity(self, org: str, ns: str, body: Json) -> Json:
        await self.svc.prepare(org, ns)
        email = check_email(body.get("email"))
        role = body.get("role")
        if role not in ROLES:
            raise I.bad(f"role must be one of {', '.join(ROLES)}")
        res = await self.svc.propose(org, ns, "id.put", email=email, role=role)
        return render.identity(res["identity"])

    @routed
    async def revoke_identity(self, org: str, ns: str, email: str) -> Json:
        await self.svc.prepare(org, ns)
        await self.svc.propose(org, ns, "id.delete", email=check_email(email))
        return {"status": "revoked"}

    async def role_in(self, org: str, ns: str, email: str | None, org_role: str) -> str:
        """The caller's role in a namespace: its Identity record there (matched
        by the token's email) replaces the org role (SPEC §5.13)."""
        if not email or not names.is_namespace(ns):
            return org_role
        key = (org, ns, email.lower())
        now = time.monotonic()
        cached = self._roles.get(key)
        if cached is None or cached[0] < now:
            # Looked up at most once a second per caller and namespace: a worker's
            # every completion must not cost a read (or an RPC) of its own; a grant
            # or revocation takes effect within that second.
            rec = await self.svc.read(org, ns, "identity", email)
            role = rec["role"] if isinstance(rec, dict) and rec.get("role") in ROLES else None
            if len(self._roles) > 10_000:
                self._roles.clear()
            cached = self._roles[key] = (now + ROLE_CACHE_S, role)
        return cached[1] or org_role


ROLES = names.ROLES
ROLE_CACHE_S = 1.0


def check_email(value: Any) -> str:
    """An identity's email, lower-cased (tokens are matched the same way)."""
    if (not isinstance(value, str) or not 3 <= len(value.encode()) <= 254 or value.count("@") != 1
            or value.startswith("@") or value.endswith("@")
            or any(c.isspace() or ord(c) < 32 or c in "\x7f/" for c in value)):
        raise I.bad("invalid email")
    return value.lower()


RESERVED_ATTRS = frozenset(
    ("WorkflowId", "RunId", "WorkflowType", "TaskQueue", "ExecutionStatus", "StartTime",
     "CloseTime", "HistoryLength", "Attempt")
)
ATTR_TYPES = ("Keyword", "Text", "Int", "Double", "Bool", "Datetime", "KeywordList")


def attr_type_ok(typ: str, v: Any) -> bool:
    if v is None:
        return True
    if typ in ("Keyword", "Text"):
        return isinstance(v, str)
    if typ == "Int":
        return isinstance(v, int) and not isinstance(v, bool)
    if typ == "Double":
        return isinstance(v, int | float) and not isinstance(v, bool)
    if typ == "Bool":
        return isinstance(v, bool)
    if typ == "Datetime":
        if not isinstance(v, str):
            return False
        try:
            parse_time(v)
        except ValueError:
            return False
        return True
    if typ == "KeywordList":
        return isinstance(v, list) and all(isinstance(x, str) for x in v)
    return False
