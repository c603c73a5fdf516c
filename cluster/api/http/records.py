"""HTTP face of deployments and nexus endpoints (SPEC §4.7), and the org-wide nexus list.

Handlers only parse HTTP (path parameters, query flags, the body) and call the
service (``cluster.service.records``). Path parameters are checked here first,
so a bad name is a 400 before anything is looked up or forwarded.

Validate is the one route that needs more than the shard: whether a worker of
the build is subscribed lives in the node's worker registry
(``cluster.dispatch.task_queues``), merged from this node and its peers.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.cluster.api.http.request import node_of
from hanzo_tasks.cluster.dispatch import task_queues as TQ
from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service.records import build_state, check_name
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.names import ADMIN, VIEWER

Json = dict[str, Any]


def _ns(c: Any) -> str:
    return names.check_namespace(c.params["ns"])


def _name(c: Any) -> str:
    return check_name(c.params["name"], "deployment name")


def _build(c: Any) -> str:
    return check_name(c.params["buildId"], "buildId")


# ---- deployments -----------------------------------------------------------------------


async def h_dep_list(s: Any, c: Any) -> Json:
    ns = _ns(c)
    return await s.records.list_deployments(c.org, ns, I.page_size(c.query), c.query.get("nextPageToken"))


async def h_dep_create(s: Any, c: Any) -> Json:
    return await s.records.create_deployment(c.org, _ns(c), c.body())


async def h_dep_get(s: Any, c: Any) -> Json:
    ns = _ns(c)
    return await s.records.get_deployment(c.org, ns, _name(c))


async def h_dep_update(s: Any, c: Any) -> Json:
    ns = _ns(c)
    return await s.records.update_deployment(c.org, ns, _name(c), c.body())


async def h_dep_delete(s: Any, c: Any) -> Json:
    ns, name = _ns(c), _name(c)
    return await s.records.delete_deployment(c.org, ns, name, force=I.query_bool(c.query, "force"))


async def h_dep_set_current(s: Any, c: Any) -> Json:
    ns = _ns(c)
    return await s.records.set_current_deployment_version(c.org, ns, _name(c), c.body())


async def h_ver_add(s: Any, c: Any) -> Json:
    ns = _ns(c)
    return await s.records.add_deployment_version(c.org, ns, _name(c), c.body())


async def h_ver_update(s: Any, c: Any) -> Json:
    ns, name = _ns(c), _name(c)
    return await s.records.update_deployment_version(c.org, ns, name, _build(c), c.body())


async def h_ver_delete(s: Any, c: Any) -> Json:
    ns, name = _ns(c), _name(c)
    return await s.records.delete_deployment_version(c.org, ns, name, _build(c))


async def h_ver_validate(s: Any, c: Any) -> Json:
    """SPEC §5.12: networkOk, the latency of one shard read, and the build's workers."""
    ns, name = _ns(c), _name(c)
    build_id = _build(c)
    shard = await s.records.validate_deployment_version(c.org, ns, name, build_id)
    reports = await _worker_reports(node_of(c), c.org, ns)
    state = build_state(reports, build_id, int(s.clock()))
    errors: list[str] = []
    if not state["workerRegistered"]:
        errors.append(f"no worker subscription in namespace {ns} carries buildId {build_id}")
    if not state["heartbeatReceived"]:
        errors.append(f"no worker of buildId {build_id} was seen in the last 60s")
    return {"networkOk": shard["networkOk"], "workerRegistered": state["workerRegistered"],
            "heartbeatReceived": state["heartbeatReceived"], "latencyMs": shard["latencyMs"], "errors": errors}


async def _worker_reports(node: Any, org: str, ns: str) -> list[Json]:
    """This node's worker report for ``(org, ns)`` and those of the peers that answer in time."""
    d = getattr(node, "dispatcher", None)
    if d is None:
        return []
    reports = [d.book.report(org, ns)]
    if d.relay is not None:
        reports.extend(await d.relay.workers(org, ns, TQ.FANOUT_TIMEOUT))
    return reports


# ---- nexus endpoints ----------------------------------------------------------------------


async def h_nexus_list(s: Any, c: Any) -> Json:
    ns = _ns(c)
    return await s.records.list_nexus_endpoints(c.org, ns, I.page_size(c.query), c.query.get("nextPageToken"))


async def h_nexus_put(s: Any, c: Any) -> Json:
    return await s.records.put_nexus_endpoint(c.org, _ns(c), c.body())


async def h_nexus_delete(s: Any, c: Any) -> Json:
    ns = _ns(c)
    return await s.records.delete_nexus_endpoint(c.org, ns, check_name(c.params["name"], "nexus endpoint name"))


async def h_nexus_org(s: Any, c: Any) -> Json:
    """GET /v1/tasks/nexus: the endpoints of every namespace of the caller's org."""
    size = I.page_size(c.query)
    stale = I.query_bool(c.query, "stale")
    return await s.records.list_org_nexus_endpoints(c.org, size, c.query.get("nextPageToken"), stale=stale)


def add_routes(r: Any, ns: str) -> None:
    """The rows of SPEC §4.7 for deployments and nexus, with their roles."""
    dep = ns + "/deployments"
    r.add("GET", dep, h_dep_list, role=VIEWER)
    r.add("POST", dep, h_dep_create, role=ADMIN)
    r.add("GET", dep + "/{name}", h_dep_get, role=VIEWER)
    r.add("POST", dep + "/{name}", h_dep_update, role=ADMIN)
    r.add("DELETE", dep + "/{name}", h_dep_delete, role=ADMIN)
    r.add("POST", dep + "/{name}/set-current", h_dep_set_current, role=ADMIN)
    r.add("POST", dep + "/{name}/versions", h_ver_add, role=ADMIN)
    r.add("POST", dep + "/{name}/versions/{buildId}", h_ver_update, role=ADMIN)
    r.add("DELETE", dep + "/{name}/versions/{buildId}", h_ver_delete, role=ADMIN)
    r.add("POST", dep + "/{name}/versions/{buildId}/validate", h_ver_validate, role=ADMIN)
    nx = ns + "/nexus"
    r.add("GET", nx, h_nexus_list, role=VIEWER)
    r.add("POST", nx, h_nexus_put, role=ADMIN)
    r.add("DELETE", nx + "/{name}", h_nexus_delete, role=ADMIN)
    r.add("GET", "/v1/tasks/nexus", h_nexus_org, role=VIEWER)
