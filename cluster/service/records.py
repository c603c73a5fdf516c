"""Service operations on deployments and nexus endpoints (SPEC §4.7, §5.1, §5.12).

A mixin of ``cluster.service.core.Service``: it validates requests into commands
(``dep.*``, ``nexus.*``, applied by ``shard.records``), reads records from the
local replica, and renders them as the JSON shapes of SPEC §5.1. Every method
that names a namespace is ``@routed``, so any node serves it by forwarding to
a replica of the namespace's partition.

Validation happens here, before anything is proposed: a field of the wrong
JSON type, a bad name or an empty required value is a 400 naming the field.
"""

from __future__ import annotations

import time
from typing import Any

from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.cluster.service.forwarding import Concept, routed
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.shard import reads

Json = dict[str, Any]

HEARTBEAT_WINDOW_MS = 60_000
"""A worker that was seen this recently counts as heartbeating (SPEC §5.12, validate)."""


# ---- validation ---------------------------------------------------------------------------


def check_name(value: Any, what: str) -> str:
    """A deployment name, buildId or nexus endpoint name (an Id, SPEC §1)."""
    return names.check_id(value, what)


def required_id(body: Json, field: str, what: str) -> str:
    v = body.get(field)
    if v is None or v == "":
        raise I.bad(f"{field} is required")
    if not isinstance(v, str):
        raise I.bad(f"{field} must be a string")
    return check_name(v, what)


def _str_fields(body: Json, fields: tuple[str, ...]) -> Json:
    """The given string fields (null = not given); ``""`` is kept: it clears on update."""
    out: Json = {}
    for f in fields:
        v = I.opt_str(body, f)
        if v is not None:
            out[f] = v
    return out


def deployment_fields(body: Json) -> Json:
    out = _str_fields(body, ("description", "ownerEmail", "defaultCompute"))
    if out.get("ownerEmail"):
        out["ownerEmail"] = names.check_email(out["ownerEmail"])
    return out


def version_fields(body: Json) -> Json:
    out = _str_fields(body, ("description", "compute", "image"))
    env = I.opt_obj(body, "env")
    if env is not None:
        if not all(isinstance(v, str) for v in env.values()):
            raise I.bad("env values must be strings")
        out["env"] = env
    return out


def org_nexus_cursor(token: str | None, org: str) -> tuple[str, str] | None:
    """(namespace, name) after which the org-wide nexus list resumes."""
    raw = I.read_token(token, "nexus", org)
    if raw is None:
        return None
    ns, sep, name = raw.partition(b"\x00")
    try:
        ns_s, name_s = ns.decode("utf-8"), name.decode("utf-8")
    except UnicodeDecodeError:
        raise I.bad("malformed nextPageToken") from None
    if not sep or not names.is_namespace(ns_s) or not name_s:
        raise I.bad("malformed nextPageToken")
    return ns_s, name_s


def build_state(reports: list[Json], build_id: str, now: int) -> Json:
    """``workerRegistered`` / ``heartbeatReceived`` of a build, from worker reports.

    The reports are those of ``cluster.dispatch.task_queues.WorkerBook.report`` (this
    node's and its peers'). A live subscription that carries the build makes it
    registered; a connected worker is being seen, so it also counts as
    heartbeating (the worker registry's ``lastHeartbeat`` rule). A worker of
    that build whose last subscription ended less than 60 s ago counts as
    heartbeating but not registered.
    """
    registered = any(
        isinstance(e, dict) and e.get("build") == build_id for rep in reports for e in rep.get("subs") or ()
    )
    recent = any(
        isinstance(g, dict) and g.get("build") == build_id and isinstance(g.get("last"), int)
        and now - g["last"] < HEARTBEAT_WINDOW_MS
        for rep in reports for g in rep.get("gone") or ()
    )
    return {"workerRegistered": registered, "heartbeatReceived": registered or recent}


# ---- the service mixin ----------------------------------------------------------------------


class Records(Concept):
    """Deployments and nexus endpoints: the records half of a node's service."""

    attr = "records"

    # ---- deployments ------------------------------------------------------------------

    @routed
    async def list_deployments(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        with self.svc.read_txn(org, ns) as txn:
            page, nxt = I.name_page(lambda after, n: reads.deployments(txn, org, ns, after, n), token,
                                    "deployments", f"{org}/{ns}", size, lambda d: d["name"])
        return {"deployments": [render.deployment(d) for d in page], "nextPageToken": nxt}

    @routed
    async def create_deployment(self, org: str, ns: str, body: Json) -> Json:
        name = required_id(body, "name", "deployment name")
        fields = deployment_fields(body)
        await self.svc.prepare(org, ns)
        res = await self.svc.propose(org, ns, "dep.create", name=name, fields=fields)
        return render.deployment(res["deployment"])

    @routed
    async def get_deployment(self, org: str, ns: str, name: str) -> Json:
        check_name(name, "deployment name")
        await self.svc.prepare(org, ns)
        with self.svc.read_txn(org, ns) as txn:
            rec = reads.deployment(txn, org, ns, name)
        if rec is None:
            raise ApiError("not_found", f"deployment {name} not found")
        return render.deployment(rec)

    @routed
    async def update_deployment(self, org: str, ns: str, name: str, body: Json) -> Json:
        check_name(name, "deployment name")
        fields = deployment_fields(body)
        await self.svc.prepare(org, ns)
        res = await self.svc.propose(org, ns, "dep.update", name=name, fields=fields)
        return render.deployment(res["deployment"])

    @routed
    async def delete_deployment(self, org: str, ns: str, name: str, force: bool = False) -> Json:
        check_name(name, "deployment name")
        await self.svc.prepare(org, ns)
        await self.svc.propose(org, ns, "dep.delete", name=name, force=bool(force))
        return {"status": "deleted"}

    @routed
    async def set_current_deployment_version(self, org: str, ns: str, name: str, body: Json) -> Json:
        check_name(name, "deployment name")
        build_id = required_id(body, "buildId", "buildId")
        await self.svc.prepare(org, ns)
        res = await self.svc.propose(org, ns, "dep.set_current", name=name, buildId=build_id)
        return render.deployment(res["deployment"])

    @routed
    async def add_deployment_version(self, org: str, ns: str, name: str, body: Json) -> Json:
        check_name(name, "deployment name")
        build_id = required_id(body, "buildId", "buildId")
        fields = version_fields(body)
        await self.svc.prepare(org, ns)
        res = await self.svc.propose(org, ns, "dep.version_add", name=name, buildId=build_id, fields=fields)
        return render.deployment_version(res["version"])

    @routed
    async def update_deployment_version(self, org: str, ns: str, name: str, build_id: str, body: Json) -> Json:
        check_name(name, "deployment name")
        check_name(build_id, "buildId")
        fields = version_fields(body)
        await self.svc.prepare(org, ns)
        res = await self.svc.propose(org, ns, "dep.version_update", name=name, buildId=build_id, fields=fields)
        return render.deployment_version(res["version"])

    @routed
    async def delete_deployment_version(self, org: str, ns: str, name: str, build_id: str) -> Json:
        check_name(name, "deployment name")
        check_name(build_id, "buildId")
        await self.svc.prepare(org, ns)
        res = await self.svc.propose(org, ns, "dep.version_delete", name=name, buildId=build_id)
        return render.deployment(res["deployment"])

    @routed
    async def validate_deployment_version(self, org: str, ns: str, name: str, build_id: str) -> Json:
        """The shard half of validate (SPEC §5.12): 404s, and the time of one shard read.

        ``workerRegistered`` / ``heartbeatReceived`` come from the node's worker
        registry, which the HTTP layer holds (see ``cluster.api.http.records``).
        """
        check_name(name, "deployment name")
        check_name(build_id, "buildId")
        await self.svc.prepare(org, ns)
        started = time.perf_counter()
        with self.svc.read_txn(org, ns) as txn:
            rec = reads.deployment(txn, org, ns, name)
        latency_ms = (time.perf_counter() - started) * 1000.0
        if rec is None:
            raise ApiError("not_found", f"deployment {name} not found")
        if not any(v["buildId"] == build_id for v in rec["versions"]):
            raise ApiError("not_found", f"build {build_id} not found in deployment {name}")
        return {"networkOk": True, "latencyMs": round(latency_ms, 3)}

    # ---- nexus endpoints -------------------------------------------------------------------

    @routed
    async def list_nexus_endpoints(self, org: str, ns: str, size: int, token: str | None) -> Json:
        await self.svc.prepare(org, ns)
        with self.svc.read_txn(org, ns) as txn:
            page, nxt = I.name_page(lambda after, n: reads.nexus_endpoints(txn, org, ns, after, n), token,
                                    "nexus-endpoints", f"{org}/{ns}", size, lambda e: e["name"])
        return {"endpoints": [render.nexus_endpoint(e) for e in page], "nextPageToken": nxt}

    @routed
    async def put_nexus_endpoint(self, org: str, ns: str, body: Json) -> Json:
        name = required_id(body, "name", "nexus endpoint name")
        target = I.opt_str(body, "target")
        if not target:
            raise I.bad("target is required")
        description = I.opt_str(body, "description") or ""
        await self.svc.prepare(org, ns)
        res = await self.svc.propose(org, ns, "nexus.put", name=name, target=target, description=description)
        return render.nexus_endpoint(res["endpoint"])

    @routed
    async def delete_nexus_endpoint(self, org: str, ns: str, name: str) -> Json:
        check_name(name, "nexus endpoint name")
        await self.svc.prepare(org, ns)
        await self.svc.propose(org, ns, "nexus.delete", name=name)
        return {"status": "deleted"}

    async def list_org_nexus_endpoints(self, org: str, size: int, token: str | None, *,
                                       stale: bool = False) -> Json:
        """GET /v1/tasks/nexus: endpoints of every namespace of the org, by (namespace, name).

        Namespaces are walked in name order through ``list_namespaces``; each
        one's endpoints are read from a replica of its partition (after a read
        barrier unless ``stale``), until one item past the page is found.
        """
        after = org_nexus_cursor(token, org)
        # Start the namespace walk at ``after``'s namespace: any proper prefix sorts before it.
        ns_token = I.make_token("namespaces", org, after[0].encode()[:-1]) if after else None
        found: list[Json] = []
        while len(found) <= size:
            listing = await self.svc.namespaces.list_namespaces(org, 1000, ns_token)
            for info in listing["namespaces"]:
                ns = info["namespaceInfo"]["name"]
                if after is not None and ns.encode() < after[0].encode():
                    continue
                start = after[1] if after is not None and ns == after[0] else None
                found.extend(await self.svc.read(org, ns, "nexus_endpoints", start, size + 1 - len(found),
                                             barrier=not stale))
                if len(found) > size:
                    break
            ns_token = listing["nextPageToken"]
            if not ns_token:
                break
        page = found[:size]
        more = len(found) > size
        cursor = (page[-1]["namespace"] + "\x00" + page[-1]["name"]).encode() if more else None
        return {"endpoints": [render.nexus_endpoint(e) for e in page], "nextPageToken": I.make_token("nexus", org, cursor)}
