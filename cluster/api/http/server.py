"""The HTTP JSON API of a node (SPEC §4), on aiohttp.

Routing is done here on the *raw* path, segment by segment, each segment
percent-decoded and then validated: so ``%2F`` inside an id, ``..`` and
``%2e%2e`` can never be mistaken for structure, and every route template is
known for the ``route`` label of the metrics. Every error is the JSON body of
SPEC §4.1; a bug answers 500 ``internal`` and is logged, never a traceback.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from hanzo_tasks.cluster import health
from hanzo_tasks.cluster.api import mcp as MCP
from hanzo_tasks.cluster.api import sse as SSE
from hanzo_tasks.cluster.api.client_errors import ServerLog
from hanzo_tasks.cluster.api.http import migrations as MIG
from hanzo_tasks.cluster.api.http import openapi as OPENAPI
from hanzo_tasks.cluster.api.http import records as REC
from hanzo_tasks.cluster.api.http.request import (
    NODE_KEY,
    NS,
    A,
    Call,
    D,
    Json,
    Route,
    Router,
    V,
    error_response,
    json_response,
    read_body,
    split_path,
    ui_response,
)
from hanzo_tasks.cluster.auth import DEV_CALLER, Caller, role_allows
from hanzo_tasks.cluster.dispatch import task_queues as TQ
from hanzo_tasks.cluster.service import Service
from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import results as RES
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.names import OWNER, check_node_id
from hanzo_tasks.replication import NotReplica

log = logging.getLogger("tasks.http")

# ---------------------------------------------------------------------------
# handlers


def _ns(c: Call) -> str:
    return c.params["ns"]


async def h_health(s: Service, c: Call) -> Json:
    return {"service": "tasks", "status": "ok", "nodeId": s.node_id, "namespace": s.default_namespace}


async def h_settings(s: Service, c: Call) -> Json:
    return health.settings(c.request.app[NODE_KEY])


async def h_cluster(s: Service, c: Call) -> Json:
    return await health.cluster_info(c.request.app[NODE_KEY], c.org, I.page_size(c.query), c.query.get("nextPageToken"))


async def h_cluster_health(s: Service, c: Call) -> Any:
    status, body = health.cluster_health(c.request.app[NODE_KEY])
    if status != 200:
        return _Status(status, body)
    return body


async def h_member_add(s: Service, c: Call) -> Json:
    body = c.body()
    node_id = check_node_id(body.get("nodeId"))
    peer = I.opt_str(body, "peer")
    if not peer or ":" not in peer:
        raise I.bad("peer must be the new node's peer address host:port")
    return await c.request.app[NODE_KEY].members.add(node_id, peer, I.opt_str(body, "http"), I.opt_str(body, "zap"))


async def h_member_remove(s: Service, c: Call) -> Json:
    return await c.request.app[NODE_KEY].members.remove(check_node_id(c.params["id"]))


async def h_batch_list(s: Service, c: Call) -> Json:
    return await s.batches.list_batches(c.org, _ns(c), I.page_size(c.query), c.query.get("nextPageToken"))


async def h_batch_start(s: Service, c: Call) -> Json:
    return await s.batches.start_batch(c.org, _ns(c), c.body())


async def h_batch_get(s: Service, c: Call) -> Json:
    return await s.batches.describe_batch(c.org, _ns(c), c.params["bid"])


async def h_batch_terminate(s: Service, c: Call) -> Json:
    return await s.batches.terminate_batch(c.org, _ns(c), c.params["bid"], c.body())


async def h_identities(s: Service, c: Call) -> Json:
    return await s.namespaces.list_identities(c.org, _ns(c), I.page_size(c.query), c.query.get("nextPageToken"))


async def h_identity_grant(s: Service, c: Call) -> Json:
    return await s.namespaces.grant_identity(c.org, _ns(c), c.body())


async def h_identity_revoke(s: Service, c: Call) -> Json:
    return await s.namespaces.revoke_identity(c.org, _ns(c), c.params["email"])


async def h_ns_list(s: Service, c: Call) -> Json:
    return await s.namespaces.list_namespaces(c.org, I.page_size(c.query), c.query.get("nextPageToken"))


async def h_ns_create(s: Service, c: Call) -> Json:
    return await s.namespaces.register_namespace(c.org, c.body())


async def h_ns_get(s: Service, c: Call) -> Json:
    return await s.namespaces.get_namespace(c.org, _ns(c))


async def h_ns_delete(s: Service, c: Call) -> Json:
    return await s.namespaces.delete_namespace(c.org, _ns(c))


async def h_ns_metadata(s: Service, c: Call) -> Json:
    return await s.namespaces.update_namespace(c.org, _ns(c), c.body())


async def h_ns_archival(s: Service, c: Call) -> Json:
    await s.namespaces.get_namespace(c.org, _ns(c))
    return {"enabled": False, "executions": [], "nextPageToken": "", "error": "archival disabled"}


async def h_dead_letters(s: Service, c: Call) -> Json:
    return await s.workflows.list_workflows(
        c.org, _ns(c), c.query.get("query"), I.page_size(c.query), c.query.get("nextPageToken"), dead=True
    )


async def h_wf_list(s: Service, c: Call) -> Json:
    return await s.workflows.list_workflows(
        c.org, _ns(c), c.query.get("query"), I.page_size(c.query), c.query.get("nextPageToken")
    )


async def h_wf_start(s: Service, c: Call) -> Json:
    return await s.workflows.start_workflow(c.org, _ns(c), c.body())


async def h_wf_sws(s: Service, c: Call) -> Json:
    return await s.workflows.start_workflow(c.org, _ns(c), c.body(), signal=True)


async def h_wf_describe(s: Service, c: Call) -> Json:
    return await s.workflows.describe_workflow(c.org, _ns(c), c.params["id"], c.run_id())


async def h_wf_cancel(s: Service, c: Call) -> Json:
    return await s.workflows.cancel_workflow(c.org, _ns(c), c.params["id"], c.run_id(), c.body())


async def h_wf_terminate(s: Service, c: Call) -> Json:
    return await s.workflows.terminate_workflow(c.org, _ns(c), c.params["id"], c.run_id(), c.body())


async def h_wf_signal(s: Service, c: Call) -> Json:
    return await s.workflows.signal_workflow(c.org, _ns(c), c.params["id"], c.run_id(), c.body())


async def h_wf_history(s: Service, c: Call) -> Json:
    q = c.query
    return await s.workflows.history(
        c.org, _ns(c), c.params["id"], c.run_id(),
        I.query_int(q, "after", 0), I.query_bool(q, "reverse"),
        I.page_size(q), q.get("nextPageToken"),
    )


async def h_wf_query(s: Service, c: Call) -> Json:
    return await s.workflows.query_metadata(c.org, _ns(c), c.params["id"], c.run_id(), c.body())


async def h_wf_metadata(s: Service, c: Call) -> Json:
    return await s.workflows.workflow_metadata(c.org, _ns(c), c.params["id"], c.run_id(), c.body())


async def h_wf_executions(s: Service, c: Call) -> Json:
    return await s.workflows.executions(c.org, _ns(c), c.params["id"], I.page_size(c.query), c.query.get("nextPageToken"))


async def h_wf_result(s: Service, c: Call) -> Any:
    """SPEC §5.6 "Waiting for a result": 200 with the closed run's outcome, 202 while still open."""
    wait = I.opt_duration(c.query, "wait", lo_ms=0, hi_ms=RES.MAX_WAIT_MS)
    answer = await s.results.workflow_result(
        c.org, _ns(c), c.params["id"], c.run_id(),
        wait_ms=RES.DEFAULT_WAIT_MS if wait is None else wait, follow=I.query_bool(c.query, "follow", True),
    )
    return _Status(202, answer) if RES.is_open(answer) else answer


async def h_wf_reset(s: Service, c: Call) -> Json:
    return await s.workflows.reset_workflow(c.org, _ns(c), c.params["id"], c.body())


async def h_sched_list(s: Service, c: Call) -> Json:
    return await s.schedules.list_schedules(c.org, _ns(c), I.page_size(c.query), c.query.get("nextPageToken"))


async def h_sched_create(s: Service, c: Call) -> Json:
    return await s.schedules.create_schedule(c.org, _ns(c), c.body(), upsert=I.query_bool(c.query, "upsert"))


async def h_sched_get(s: Service, c: Call) -> Json:
    return await s.schedules.describe_schedule(c.org, _ns(c), c.params["sid"])


async def h_sched_update(s: Service, c: Call) -> Json:
    return await s.schedules.update_schedule(c.org, _ns(c), c.params["sid"], c.body())


async def h_sched_delete(s: Service, c: Call) -> Json:
    return await s.schedules.delete_schedule(c.org, _ns(c), c.params["sid"])


async def h_sched_trigger(s: Service, c: Call) -> Json:
    return await s.schedules.trigger_schedule(c.org, _ns(c), c.params["sid"], c.body())


async def h_sched_times(s: Service, c: Call) -> Json:
    return await s.schedules.matching_times(c.org, _ns(c), c.params["sid"], c.query)


async def h_sched_pause(s: Service, c: Call) -> Json:
    return await s.schedules.pause_schedule(c.org, _ns(c), c.params["sid"], c.body(), True)


async def h_sched_unpause(s: Service, c: Call) -> Json:
    return await s.schedules.pause_schedule(c.org, _ns(c), c.params["sid"], c.body(), False)


async def h_sa_list(s: Service, c: Call) -> Json:
    return await s.namespaces.list_search_attributes(c.org, _ns(c), I.page_size(c.query), c.query.get("nextPageToken"))


async def h_sa_add(s: Service, c: Call) -> Json:
    return await s.namespaces.add_search_attribute(c.org, _ns(c), c.body())


async def h_sa_remove(s: Service, c: Call) -> Json:
    return await s.namespaces.remove_search_attribute(c.org, _ns(c), c.params["name"])


async def h_act_list(s: Service, c: Call) -> Json:
    return await s.activities.list_activities(c.org, _ns(c), I.page_size(c.query), c.query.get("nextPageToken"),
                                   c.query.get("cursor"))


async def h_act_start(s: Service, c: Call) -> Json:
    return await s.activities.start_activity(c.org, _ns(c), c.body())


async def h_act_get(s: Service, c: Call) -> Json:
    return await s.activities.describe_activity(c.org, _ns(c), c.params["aid"], c.params["rid"])


async def h_act_cancel(s: Service, c: Call) -> Json:
    return await s.activities.cancel_activity(c.org, _ns(c), c.params["aid"], c.params["rid"], c.body())


async def h_act_complete(s: Service, c: Call) -> Json:
    return await s.activities.complete_activity(c.org, _ns(c), c.params["aid"], c.params["rid"], c.body())


async def h_act_fail(s: Service, c: Call) -> Json:
    return await s.activities.fail_activity(c.org, _ns(c), c.params["aid"], c.params["rid"], c.body())


async def h_act_heartbeat(s: Service, c: Call) -> Json:
    return await s.activities.heartbeat_activity(c.org, _ns(c), c.params["aid"], c.params["rid"], c.body())


async def h_act_history(s: Service, c: Call) -> Json:
    q = c.query
    return await s.activities.activity_history(
        c.org, _ns(c), c.params["aid"], c.params["rid"],
        I.query_int(q, "after", 0), I.query_bool(q, "reverse"), I.page_size(q), q.get("nextPageToken"),
    )


async def h_tq_list(s: Service, c: Call) -> Json:
    return await TQ.list_task_queues(s, c.request.app[NODE_KEY], c.org, _ns(c), I.page_size(c.query),
                                     c.query.get("nextPageToken"))


async def h_tq_get(s: Service, c: Call) -> Json:
    return await TQ.describe_task_queue(s, c.org, _ns(c), c.params["q"], I.page_size(c.query),
                                        c.query.get("nextPageToken"))


async def h_tq_workers(s: Service, c: Call) -> Json:
    return await TQ.list_workers(s, c.request.app[NODE_KEY], c.org, _ns(c), c.params["q"], I.page_size(c.query),
                                 c.query.get("nextPageToken"))


async def h_tq_partitions(s: Service, c: Call) -> Json:
    return await TQ.task_queue_partitions(s, c.org, _ns(c), c.params["q"])


async def h_workers_list(s: Service, c: Call) -> Json:
    return await TQ.list_workers(s, c.request.app[NODE_KEY], c.org, _ns(c), None, I.page_size(c.query),
                                 c.query.get("nextPageToken"))


async def h_worker_get(s: Service, c: Call) -> Json:
    return await TQ.get_worker(s, c.request.app[NODE_KEY], c.org, _ns(c), c.params["identity"])


def build_router() -> Router:
    r = Router()
    r.add("GET", "/healthz", h_health, role=None)
    r.add("GET", "/v1/tasks/health", h_health, role=None)
    r.add("GET", "/v1/tasks/settings", h_settings, role=None)
    r.add("GET", "/v1/tasks/cluster", h_cluster, role=V)
    r.add("GET", "/v1/tasks/cluster/health", h_cluster_health, role=None)
    r.add("POST", "/v1/tasks/cluster/members", h_member_add, role=OWNER, operator=True)  # see Route.operator
    r.add("DELETE", "/v1/tasks/cluster/members/{id}", h_member_remove, role=OWNER, operator=True)
    r.add("GET", "/v1/tasks/namespaces", h_ns_list, role=V)
    MIG.add_routes(r, NS)
    REC.add_routes(r, NS)
    r.add("POST", "/v1/tasks/mcp", MCP.h_mcp, role=V, raw_body=True)  # each tool checks its own role (SPEC §7)
    r.add("GET", "/v1/tasks/events", SSE.h_events, role=V, query_token=True)  # answers with its own stream
    r.add("POST", "/v1/tasks/namespaces", h_ns_create, role=A)
    r.add("GET", NS, h_ns_get, role=V)
    r.add("DELETE", NS, h_ns_delete, role=A)
    r.add("POST", NS + "/metadata", h_ns_metadata, role=A)
    r.add("GET", NS + "/archival", h_ns_archival, role=V)
    r.add("GET", NS + "/dead-letters", h_dead_letters, role=V)
    wf = NS + "/workflows"
    r.add("GET", wf, h_wf_list, role=V)
    r.add("POST", wf, h_wf_start, role=D)
    r.add("POST", wf + "/signal-with-start", h_wf_sws, role=D)
    r.add("GET", wf + "/{id}", h_wf_describe, role=V)
    r.add("POST", wf + "/{id}/cancel", h_wf_cancel, role=D)
    r.add("POST", wf + "/{id}/terminate", h_wf_terminate, role=D)
    r.add("POST", wf + "/{id}/signal", h_wf_signal, role=D)
    r.add("GET", wf + "/{id}/history", h_wf_history, role=V)
    r.add("POST", wf + "/{id}/query", h_wf_query, role=V)
    r.add("POST", wf + "/{id}/metadata", h_wf_metadata, role=D)
    r.add("GET", wf + "/{id}/executions", h_wf_executions, role=V)
    r.add("POST", wf + "/{id}/reset", h_wf_reset, role=D)
    r.add("GET", wf + "/{id}/result", h_wf_result, role=V)
    sc = NS + "/schedules"
    r.add("GET", sc, h_sched_list, role=V)
    r.add("POST", sc, h_sched_create, role=A)
    r.add("GET", sc + "/{sid}", h_sched_get, role=V)
    r.add("POST", sc + "/{sid}", h_sched_update, role=A)
    r.add("DELETE", sc + "/{sid}", h_sched_delete, role=A)
    r.add("POST", sc + "/{sid}/trigger", h_sched_trigger, role=A)
    r.add("GET", sc + "/{sid}/matching-times", h_sched_times, role=V)
    r.add("POST", sc + "/{sid}/pause", h_sched_pause, role=A)
    r.add("POST", sc + "/{sid}/unpause", h_sched_unpause, role=A)
    sa = NS + "/search-attributes"
    r.add("GET", sa, h_sa_list, role=V)
    r.add("POST", sa, h_sa_add, role=A)
    r.add("DELETE", sa + "/{name}", h_sa_remove, role=A)
    act = NS + "/activities"
    r.add("GET", act, h_act_list, role=V)
    r.add("POST", act, h_act_start, role=D)
    r.add("GET", act + "/{aid}/{rid}", h_act_get, role=V)
    r.add("POST", act + "/{aid}/{rid}/cancel", h_act_cancel, role=D)
    r.add("POST", act + "/{aid}/{rid}/complete", h_act_complete, role=D)
    r.add("POST", act + "/{aid}/{rid}/fail", h_act_fail, role=D)
    r.add("POST", act + "/{aid}/{rid}/heartbeat", h_act_heartbeat, role=D)
    r.add("GET", act + "/{aid}/{rid}/history", h_act_history, role=V)
    bt = NS + "/batches"
    r.add("GET", bt, h_batch_list, role=V)
    r.add("POST", bt, h_batch_start, role=A)
    r.add("GET", bt + "/{bid}", h_batch_get, role=V)
    r.add("POST", bt + "/{bid}/terminate", h_batch_terminate, role=A)
    ids = NS + "/identities"
    r.add("GET", ids, h_identities, role=V)
    r.add("POST", ids, h_identity_grant, role=OWNER)
    r.add("DELETE", ids + "/{email}", h_identity_revoke, role=OWNER)
    tq = NS + "/task-queues"
    r.add("GET", tq, h_tq_list, role=V)
    r.add("GET", tq + "/{q}", h_tq_get, role=V)
    r.add("GET", tq + "/{q}/workers", h_tq_workers, role=V)
    r.add("GET", tq + "/{q}/partitions", h_tq_partitions, role=V)
    r.add("GET", NS + "/workers", h_workers_list, role=V)
    r.add("GET", NS + "/workers/{identity}", h_worker_get, role=V)
    r.add("GET", OPENAPI.PATH, OPENAPI.handler(r), role=None)  # built from this table on first use
    return r


class HttpApi:
    """The aiohttp application of a node."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.router = build_router()
        self.app = web.Application(client_max_size=node.cfg.limits.max_body + 1,
                                   handler_args={"logger": ServerLog(node.metrics)})  # quiet client errors
        self.app[NODE_KEY] = node
        # [\s\S], not ".": a path with %0A decodes to a newline, and must still reach dispatch (JSON 400).
        self.app.router.add_route("*", r"/{tail:[\s\S]*}", self.dispatch)

    async def authenticate(self, request: web.Request, route: Route, params: dict[str, str]) -> Caller:
        """The caller of a route (SPEC §9): the dev caller while auth is off or
        for the routes that need no token; else the verified token's org and
        role, which must reach the route's role (403 otherwise). Client-sent
        ``X-Org-Id`` and similar headers are never read."""
        auth = self.node.auth
        if not auth.enabled or route.role is None:
            return DEV_CALLER
        token = request.headers.get("Authorization")
        if token is None and route.query_token:
            token = request.query.get("access_token")
        caller = await auth.authenticate(token)
        if route.operator:  # the claim is the capability; no org role grants it
            if not caller.operator:
                raise ApiError("permission_denied", "cluster membership needs an operator token "
                                                    "(claim tasks_cluster_admin: true), not an org role")
            return caller
        role = caller.role
        if "ns" in params:  # an Identity record in the namespace replaces the org role
            role = await self.node.service.namespaces.role_in(caller.stored_org, params["ns"], caller.email, role)
        if not role_allows(role, route.role):
            raise ApiError("permission_denied", f"this needs the {route.role} role; the caller has {role}")
        return caller

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        node = self.node
        started = time.perf_counter()
        method = request.method
        template = "unmatched"
        resp: web.StreamResponse
        try:
            segments = split_path(request.rel_url.raw_path)
            ui = node.cfg.ui_dir
            if ui and method in ("GET", "HEAD") and (segments in ([""], []) or segments[:2] == ["_", "tasks"]):
                template = "/_/tasks/*"
                resp = ui_response(ui, segments, node.node_id)
                node.metrics.http_requests.labels(template, method, str(resp.status)).inc()
                return resp
            if segments in (["readyz"], ["metrics"]) and method not in ("GET", "HEAD"):
                template = "/" + segments[0]
                raise _MethodNotAllowed(["GET"])
            if segments == ["readyz"]:
                template = "/readyz"
                resp = health.readyz_response(node)
            elif segments == ["metrics"]:
                template = "/metrics"
                resp = web.Response(body=node.metrics.render(), headers={"X-Tasks-Node": node.node_id},
                                    content_type="text/plain", charset="utf-8")
            else:
                route, params, allowed, template = self.router.match(segments, method)
                if route is None:
                    if allowed:
                        raise _MethodNotAllowed(allowed)
                    raise ApiError("not_found", f"no route for {method} {request.rel_url.path}")
                caller = await self.authenticate(request, route, params)
                call = Call(request, params, org=caller.stored_org, caller=caller)
                if route.raw_body:
                    call._body = {}
                elif method in ("POST", "PUT", "PATCH", "DELETE"):
                    call._body = await read_body(request, node.cfg.limits.max_body)
                    if method == "DELETE" and call._body is None:
                        call._body = {}
                else:
                    call._body = {}
                    if "ns" in params and not I.query_bool(request.query, "stale"):
                        await node.service.read_barrier(call.org, params["ns"])
                result = await route.handler(node.service, call)
                if isinstance(result, web.StreamResponse):
                    resp = result  # a streaming handler (SSE) answered itself, X-Tasks-Node included
                elif isinstance(result, _Status):
                    resp = json_response(result.status, result.body, node.node_id, {"Retry-After": "1"})
                else:
                    resp = json_response(route.status, result, node.node_id)
        except _MethodNotAllowed as e:
            resp = json_response(
                405,
                {"code": "method_not_allowed", "message": f"{method} is not allowed here"},
                node.node_id,
                {"Allow": ", ".join(e.allowed)},
            )
        except ApiError as e:
            if e.code == "storage_full":
                node.metrics.storage_full.inc()
            elif e.code == "rate_limited":
                node.metrics.rate_limited.labels("namespace").inc()
            resp = error_response(e, node.node_id)
        except web.HTTPException:
            raise
        except NotReplica as e:  # the layout changed while the request was served here
            resp = error_response(ApiError("unavailable", f"{e}; retry", retry_after=1), node.node_id)
        except Exception:
            log.exception("bug serving %s %s", method, request.rel_url.path)
            resp = error_response(ApiError("internal", "internal error"), node.node_id)
        node.metrics.http_requests.labels(template, method, str(resp.status)).inc()
        node.metrics.http_duration.labels(template, method).observe(time.perf_counter() - started)
        return resp


@dataclass(frozen=True)
class _Status:
    """A handler's non-error answer with a status other than 200 (health checks)."""

    status: int
    body: Any


class _MethodNotAllowed(Exception):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__("method not allowed")
        self.allowed = allowed
