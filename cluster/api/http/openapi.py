"""The OpenAPI 3.1 document of the HTTP API, served at ``GET /v1/tasks/openapi.json``.

Why it is built from the route table rather than written by hand: paths,
methods, path parameters, the success status and which routes need a token
come from :class:`Router` itself, so the document cannot drift from what the
server routes. What the table does not know (a summary, the query
parameters, the body and answer shapes, the route's own error statuses) is
in :data:`OPERATIONS`, keyed by ``(method, template)``. A route added to the
table without an entry here is listed by :func:`undocumented` (a test fails),
and is still served with a bare description rather than breaking the
document; an entry whose route is gone is listed by :func:`stale`.

Errors (SPEC §4.1): every route may answer 400, 429 and 503; a route that
needs a token adds 401 and 403; one with path parameters adds 404; one that
reads a body adds 413 and, as a write, 507. Each answer's body is ``Error``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hanzo_tasks.cluster.api.http.openapi_shapes import (
    DURATION,
    ID,
    RUN_ID,
    SCHEMAS,
    STATUS_ONLY,
    Schema,
    page_of,
    ref,
)
from hanzo_tasks.cluster.api.http.request import NODE_KEY, NS, Call, Handler, Json, Router

PATH = "/v1/tasks/openapi.json"

ERROR_TEXT = {
    400: "invalid_argument: a field, path segment or query parameter is not valid",
    401: "unauthenticated: no token, or one that does not verify (auth on)",
    403: "permission_denied: the caller's role is below the route's (auth on)",
    404: "not_found: the namespace or the named record does not exist",
    409: "already_exists, already_started or failed_precondition",
    413: "too_large: the body is over limits.max_body, or a payload over limits.max_payload",
    429: "rate_limited: over the namespace's apsLimit or limits.rate_per_org (Retry-After)",
    503: "unavailable or no_workers: no leader or quorum, the write's outcome is unknown (Retry-After)",
    504: "timeout: the worker did not answer in time",
    507: "storage_full: the node's store is full",
}


@dataclass(frozen=True)
class Op:
    """What the route table does not say about one route."""

    id: str
    summary: str
    tag: str
    answer: Schema | None = None
    body: str | None = None
    """The request body's schema name in ``components.schemas`` (None: no body is read)."""
    query: tuple[str, ...] = ()
    """Names in :data:`QUERY`."""
    also: tuple[int, ...] = ()
    """Statuses of this route beyond its success and the common errors (SPEC §4, column Errors;
    202 where an answer may come before the outcome)."""
    bodiless: tuple[int, ...] = ()
    """Success statuses answered without a body."""


PAGE = ("pageSize", "nextPageToken")
RUN = ("runId", "execution.runId")

QUERY: dict[str, tuple[Schema, str]] = {
    "pageSize": ({"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}, "items per page"),
    "nextPageToken": ({"type": "string"}, "from the previous page; \"\" or absent for the first"),
    "runId": (RUN_ID, "a run of the workflow; absent: the latest run"),
    "execution.runId": (RUN_ID, "alias of runId"),
    "stale": ({"type": "boolean"}, "true lets any replica answer (no leader read barrier)"),
    "query": ({"type": "string", "maxLength": 4096}, "visibility query (SPEC §5.11); empty matches all"),
    "after": ({"type": "integer", "minimum": 0}, "events after this event id"),
    "reverse": ({"type": "boolean"}, "newest first"),
    "wait": (DURATION, "how long to wait for the run to close (0s-60s, default 30s)"),
    "follow": ({"type": "boolean", "default": True}, "follow ContinueAsNew to the last run"),
    "upsert": ({"type": "boolean"}, "replace an existing schedule instead of 409"),
    "force": ({"type": "boolean"}, "delete even when versions exist"),
    "from": ({"type": "string", "format": "date-time"}, "first time (default now)"),
    "start": ({"type": "string", "format": "date-time"}, "alias of from"),
    "to": ({"type": "string", "format": "date-time"}, "last time (default from + 24h)"),
    "end": ({"type": "string", "format": "date-time"}, "alias of to"),
    "cursor": ({"type": "string"}, "legacy <activityId>|<runId> cursor"),
    "namespace": ({"type": "string"}, "only this namespace's events"),
    "kinds": ({"type": "string"}, "comma-separated kinds, or prefixes ending in ."),
    "lastEventId": ({"type": "string"}, "resume after this event (as the Last-Event-ID header)"),
    "access_token": ({"type": "string"}, "the bearer token, for browsers' EventSource"),
}

_WF = NS + "/workflows"
_SC = NS + "/schedules"
_DEP = NS + "/deployments"
_ACT = NS + "/activities"
_TQ = NS + "/task-queues"
WE = ref("WorkflowExecution")
ACT = ref("StandaloneActivity")

OPERATIONS: dict[tuple[str, str], Op] = {
    ("GET", PATH): Op("openapi", "This document", "service", {"type": "object"}),
    ("GET", "/healthz"): Op("healthz", "Liveness", "service", ref("Health")),
    ("GET", "/v1/tasks/health"): Op("health", "Liveness (as /healthz)", "service", ref("Health")),
    ("GET", "/v1/tasks/settings"): Op("settings", "Node settings and capabilities", "service",
                                      ref("Settings")),
    ("GET", "/v1/tasks/cluster"): Op("cluster", "Members, partitions and shards", "cluster", ref("Cluster"),
                                     query=PAGE),
    ("GET", "/v1/tasks/cluster/health"): Op("cluster_health", "Quorum health (503 when degraded)",
                                            "cluster", ref("ClusterHealth")),
    ("POST", "/v1/tasks/cluster/members"): Op("member_add", "Add a node (operator token)", "cluster",
                                              {"type": "object"}, "MemberAdd", also=(409,)),
    ("DELETE", "/v1/tasks/cluster/members/{id}"): Op("member_remove", "Remove a node (operator token)",
                                                     "cluster", {"type": "object"}, also=(409,)),
    ("GET", "/v1/tasks/migrations"): Op("migration_list", "Migration jobs of the caller's org", "cluster",
                                        page_of("jobs", ref("Job")), query=PAGE),
    ("GET", "/v1/tasks/migrations/{id}"): Op("migration_get", "One migration job", "cluster", ref("Job")),
    ("GET", "/v1/tasks/events"): Op("events", "Server-Sent Events (text/event-stream, SPEC §6)", "service",
                                    query=("namespace", "kinds", "lastEventId", "access_token")),
    ("POST", "/v1/tasks/mcp"): Op("mcp", "MCP over JSON-RPC (SPEC §7); 202 without a body for a notification",
                                  "service", {"type": "object"}, "JsonRpc", also=(202,), bodiless=(202,)),
    ("GET", "/v1/tasks/nexus"): Op("nexus_org", "Nexus endpoints of every namespace", "nexus",
                                   page_of("endpoints", ref("NexusEndpoint")), query=(*PAGE, "stale")),
    # namespaces
    ("GET", "/v1/tasks/namespaces"): Op("namespace_list", "List namespaces", "namespaces",
                                        page_of("namespaces", ref("Namespace")), query=PAGE),
    ("POST", "/v1/tasks/namespaces"): Op("namespace_create", "Register a namespace", "namespaces",
                                         ref("Namespace"), "Namespace", also=(409,)),
    ("GET", NS): Op("namespace_get", "Describe a namespace", "namespaces", ref("Namespace")),
    ("DELETE", NS): Op("namespace_delete", "Delete a namespace (DELETED until purged)", "namespaces",
                       ref("Namespace")),
    ("POST", NS + "/metadata"): Op("namespace_update", "Update a namespace", "namespaces", ref("Namespace"),
                                   "NamespaceUpdate"),
    ("GET", NS + "/archival"): Op("namespace_archival", "Archival (always disabled)", "namespaces",
                                  {"type": "object"}),
    ("POST", NS + "/migrate"): Op("namespace_migrate", "Move a namespace to another node or partition",
                                  "namespaces", ref("Job"), "Migrate", also=(409,)),
    ("GET", NS + "/dead-letters"): Op("dead_letters", "Runs that failed for good", "workflows",
                                      page_of("executions", WE), query=(*PAGE, "query")),
    # workflows
    ("GET", _WF): Op("workflow_list", "List runs", "workflows", page_of("executions", WE),
                     query=(*PAGE, "query")),
    ("POST", _WF): Op("workflow_start", "Start a workflow", "workflows", WE, "StartWorkflow", also=(409,)),
    ("POST", _WF + "/signal-with-start"): Op("workflow_signal_with_start", "Signal, starting if needed",
                                             "workflows", WE, "SignalWithStart", also=(409,)),
    ("GET", _WF + "/{id}"): Op("workflow_describe", "Describe a run", "workflows", ref("DescribeWorkflow"),
                               query=RUN),
    ("POST", _WF + "/{id}/cancel"): Op("workflow_cancel", "Request cancellation", "workflows", WE, "Reason",
                                       query=RUN),
    ("POST", _WF + "/{id}/terminate"): Op("workflow_terminate", "Terminate a run", "workflows", WE, "Reason",
                                          query=RUN),
    ("POST", _WF + "/{id}/signal"): Op("workflow_signal", "Signal a run", "workflows", STATUS_ONLY, "Signal",
                                       query=RUN, also=(409,)),
    ("GET", _WF + "/{id}/history"): Op("workflow_history", "A run's history", "workflows", ref("History"),
                                       query=(*RUN, "after", "reverse", *PAGE)),
    ("POST", _WF + "/{id}/query"): Op("workflow_query", "Query a run", "workflows", ref("QueryResult"),
                                      "Query", query=RUN, also=(409, 504)),
    ("POST", _WF + "/{id}/metadata"): Op("workflow_metadata", "Set a run's user metadata", "workflows", WE,
                                         "WorkflowMetadata", query=RUN),
    ("GET", _WF + "/{id}/executions"): Op("workflow_executions", "Every run of a workflow id", "workflows",
                                          page_of("executions", WE), query=PAGE),
    ("POST", _WF + "/{id}/reset"): Op("workflow_reset", "Reset to an event", "workflows", WE, "Reset"),
    ("GET", _WF + "/{id}/result"): Op("workflow_result", "Wait for a run's result (long poll)", "workflows",
                                      ref("WorkflowResult"), query=(*RUN, "wait", "follow"), also=(202,)),
    # schedules
    ("GET", _SC): Op("schedule_list", "List schedules", "schedules", page_of("schedules", ref("Schedule")),
                     query=PAGE),
    ("POST", _SC): Op("schedule_create", "Create a schedule", "schedules", ref("Schedule"), "Schedule",
                      query=("upsert",), also=(409,)),
    ("GET", _SC + "/{sid}"): Op("schedule_describe", "Describe a schedule", "schedules", ref("Schedule")),
    ("POST", _SC + "/{sid}"): Op("schedule_update", "Replace spec, action and policies", "schedules",
                                 ref("Schedule"), "Schedule", also=(409,)),
    ("DELETE", _SC + "/{sid}"): Op("schedule_delete", "Delete a schedule", "schedules", STATUS_ONLY),
    ("POST", _SC + "/{sid}/trigger"): Op("schedule_trigger", "Start now", "schedules", ref("TriggerResult"),
                                         "ScheduleTrigger", also=(409,)),
    ("GET", _SC + "/{sid}/matching-times"): Op("schedule_times", "Nominal times in a window", "schedules",
                                               ref("MatchingTimes"), query=("from", "start", "to", "end")),
    ("POST", _SC + "/{sid}/pause"): Op("schedule_pause", "Pause", "schedules", STATUS_ONLY, "Note"),
    ("POST", _SC + "/{sid}/unpause"): Op("schedule_unpause", "Unpause", "schedules", STATUS_ONLY, "Note"),
    # search attributes
    ("GET", NS + "/search-attributes"): Op("search_attribute_list", "List search attributes",
                                           "search-attributes",
                                           page_of("searchAttributes", ref("SearchAttribute")), query=PAGE),
    ("POST", NS + "/search-attributes"): Op("search_attribute_add", "Register a search attribute",
                                            "search-attributes", ref("SearchAttribute"), "SearchAttribute",
                                            also=(409,)),
    ("DELETE", NS + "/search-attributes/{name}"): Op("search_attribute_remove", "Remove a search attribute",
                                                     "search-attributes", STATUS_ONLY),
    # standalone activities
    ("GET", _ACT): Op("activity_list", "List standalone activities", "activities",
                      page_of("activities", ACT), query=(*PAGE, "cursor")),
    ("POST", _ACT): Op("activity_start", "Start a standalone activity", "activities", ACT, "ActivityStart",
                       also=(409,)),
    ("GET", _ACT + "/{aid}/{rid}"): Op("activity_describe", "Describe an activity", "activities", ACT),
    ("POST", _ACT + "/{aid}/{rid}/cancel"): Op("activity_cancel", "Cancel an activity", "activities", ACT,
                                               "Reason", also=(409,)),
    ("POST", _ACT + "/{aid}/{rid}/complete"): Op("activity_complete", "Complete an activity", "activities",
                                                 ACT, "ActivityComplete", also=(409,)),
    ("POST", _ACT + "/{aid}/{rid}/fail"): Op("activity_fail", "Fail an attempt", "activities", ACT,
                                             "ActivityFail", also=(409,)),
    ("POST", _ACT + "/{aid}/{rid}/heartbeat"): Op("activity_heartbeat", "Heartbeat", "activities", ACT,
                                                  "ActivityHeartbeat", also=(409,)),
    ("GET", _ACT + "/{aid}/{rid}/history"): Op("activity_history", "An activity's history", "activities",
                                               ref("History"), query=("after", "reverse", *PAGE)),
    # batches
    ("GET", NS + "/batches"): Op("batch_list", "List batch operations", "batches",
                                 page_of("batches", ref("BatchOperation")), query=PAGE),
    ("POST", NS + "/batches"): Op("batch_start", "Start a batch operation", "batches", ref("BatchOperation"),
                                  "BatchStart", also=(409,)),
    ("GET", NS + "/batches/{bid}"): Op("batch_describe", "Describe a batch", "batches",
                                       ref("BatchOperation")),
    ("POST", NS + "/batches/{bid}/terminate"): Op("batch_terminate", "Stop a batch", "batches",
                                                  ref("BatchOperation"), "Reason"),
    # identities
    ("GET", NS + "/identities"): Op("identity_list", "List identities", "identities",
                                    page_of("identities", ref("Identity")), query=PAGE),
    ("POST", NS + "/identities"): Op("identity_grant", "Grant a role", "identities", ref("Identity"),
                                     "Identity"),
    ("DELETE", NS + "/identities/{email}"): Op("identity_revoke", "Revoke a role", "identities",
                                               STATUS_ONLY),
    # task queues and workers
    ("GET", _TQ): Op("task_queue_list", "Task queues with backlog and workers", "task-queues",
                     page_of("taskQueues", ref("TaskQueue")), query=PAGE),
    ("GET", _TQ + "/{q}"): Op("task_queue_describe", "One task queue and its runs", "task-queues",
                              ref("TaskQueue"), query=PAGE),
    ("GET", _TQ + "/{q}/workers"): Op("task_queue_workers", "Workers of a queue", "task-queues",
                                      page_of("workers", ref("Worker")), query=PAGE),
    ("GET", _TQ + "/{q}/partitions"): Op("task_queue_partitions", "Partitions of a queue", "task-queues",
                                         {"type": "object"}),
    ("GET", NS + "/workers"): Op("worker_list", "Workers of a namespace", "task-queues",
                                 page_of("workers", ref("Worker")), query=PAGE),
    ("GET", NS + "/workers/{identity}"): Op("worker_get", "One worker", "task-queues", ref("Worker")),
    # deployments and nexus
    ("GET", _DEP): Op("deployment_list", "List deployments", "deployments",
                      page_of("deployments", ref("Deployment")), query=PAGE),
    ("POST", _DEP): Op("deployment_create", "Create a deployment", "deployments", ref("Deployment"),
                       "DeploymentCreate", also=(409,)),
    ("GET", _DEP + "/{name}"): Op("deployment_get", "Describe a deployment", "deployments", ref("Deployment")),
    ("POST", _DEP + "/{name}"): Op("deployment_update", "Update a deployment", "deployments",
                                   ref("Deployment"), "DeploymentUpdate"),
    ("DELETE", _DEP + "/{name}"): Op("deployment_delete", "Delete a deployment", "deployments", STATUS_ONLY,
                                     query=("force",), also=(409,)),
    ("POST", _DEP + "/{name}/set-current"): Op("deployment_set_current", "Make a build current",
                                               "deployments", ref("Deployment"), "SetCurrent"),
    ("POST", _DEP + "/{name}/versions"): Op("version_add", "Add a version", "deployments",
                                            ref("DeploymentVersion"), "VersionCreate", also=(409,)),
    ("POST", _DEP + "/{name}/versions/{buildId}"): Op("version_update", "Update a version", "deployments",
                                                      ref("DeploymentVersion"), "VersionUpdate"),
    ("DELETE", _DEP + "/{name}/versions/{buildId}"): Op("version_delete", "Delete a version", "deployments",
                                                        ref("Deployment"), also=(409,)),
    ("POST", _DEP + "/{name}/versions/{buildId}/validate"): Op(
        "version_validate", "Check a build's workers", "deployments", ref("Validation"), "Empty"),
    ("GET", NS + "/nexus"): Op("nexus_list", "List nexus endpoints", "nexus",
                               page_of("endpoints", ref("NexusEndpoint")), query=PAGE),
    ("POST", NS + "/nexus"): Op("nexus_put", "Create or replace a nexus endpoint", "nexus",
                                ref("NexusEndpoint"), "NexusEndpoint"),
    ("DELETE", NS + "/nexus/{name}"): Op("nexus_delete", "Delete a nexus endpoint", "nexus", STATUS_ONLY),
}

OUTSIDE_ROUTER: dict[tuple[str, str], Op] = {
    ("GET", "/readyz"): Op("readyz", "Readiness (503 with reasons until ready)", "service",
                           {"type": "object"}, also=(503,)),
    ("GET", "/metrics"): Op("metrics", "Prometheus metrics (text)", "service"),
}
"""Routes the server answers before the route table (SPEC §4.2), documented all the same."""

_PATH_PARAM: dict[str, Schema] = {
    "ns": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
    "email": {"type": "string", "pattern": "^[^@\\s/]+@[^@\\s/]+$", "maxLength": 254},
    "name": {"type": "string", "minLength": 1, "maxLength": 255},
}


def undocumented(router: Router) -> list[tuple[str, str]]:
    """Routes of the table without an entry in :data:`OPERATIONS`."""
    return [(r.method, r.template) for r in router.routes if (r.method, r.template) not in OPERATIONS]


def stale(router: Router) -> list[tuple[str, str]]:
    """Entries of :data:`OPERATIONS` whose route is no longer in the table."""
    routed = {(r.method, r.template) for r in router.routes}
    return sorted(k for k in OPERATIONS if k not in routed)


def document(router: Router, version: str = "") -> Json:
    """The OpenAPI 3.1 document of every route in ``router`` (and :data:`OUTSIDE_ROUTER`)."""
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes:
        op = OPERATIONS.get((route.method, route.template)) or Op(
            route.handler.__name__.removeprefix("h_"), "(undocumented)", "undocumented")
        params = [p[1:-1] for p in route.parts if p.startswith("{")]
        paths.setdefault(route.template, {})[route.method.lower()] = _operation(
            op, route.method, params, route.status, route.role is not None)
    for (method, template), op in OUTSIDE_ROUTER.items():
        paths.setdefault(template, {})[method.lower()] = _operation(op, method, [], 200, False, common=False)
    schemas = dict(SCHEMAS)
    schemas["Empty"] = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "Hanzo Tasks HTTP API", "version": version or "0",
                 "description": "Durable workflows, schedules and activities. Every error answer is "
                                "{code, message, details?}; GET routes under a namespace accept "
                                "?stale=true to read from any replica."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "responses": {str(s): {"description": text, "content": _json(ref("Error"))}
                          for s, text in ERROR_TEXT.items()},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "only when auth is on (SPEC §9)"}},
        },
    }


def statuses(method: str, params: list[str], status: int, needs_token: bool, extra: tuple[int, ...],
             common: bool = True) -> list[int]:
    """The statuses one route documents: its success, SPEC §4.1's common errors, its own."""
    out = {status}
    if common:
        out |= {400, 429, 503}
        if needs_token:
            out |= {401, 403}
        if params:
            out.add(404)
        if method != "GET":
            out |= {413, 507}
    return sorted(out | set(extra))


def _operation(op: Op, method: str, params: list[str], status: int, needs_token: bool,
               common: bool = True) -> Json:
    responses: dict[str, Any] = {}
    for s in statuses(method, params, status, needs_token, op.also, common):
        if s < 300:
            answer: Json = {"description": "success"}
            if s in op.bodiless:
                pass
            elif op.answer is not None:
                answer["content"] = _json(op.answer)
            elif op.id == "events":
                answer["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
            elif op.id == "metrics":
                answer["content"] = {"text/plain": {"schema": {"type": "string"}}}
            responses[str(s)] = answer
        else:
            responses[str(s)] = {"$ref": f"#/components/responses/{s}"}
    query = list(op.query)
    if method == "GET" and "ns" in params:
        query.append("stale")  # the server's read barrier reads it on every such route
    parameters = [{"name": p, "in": "path", "required": True, "schema": _PATH_PARAM.get(p, ID)}
                  for p in params]
    parameters += [{"name": q, "in": "query", "required": False, "schema": QUERY[q][0],
                    "description": QUERY[q][1]} for q in dict.fromkeys(query)]
    out: Json = {"operationId": op.id, "summary": op.summary, "tags": [op.tag], "responses": responses}
    if parameters:
        out["parameters"] = parameters
    if op.body is not None:
        out["requestBody"] = {"required": False, "content": _json(ref(op.body))}
    if needs_token:
        out["security"] = [{"bearer": []}]
    return out


def _json(schema: Schema) -> Json:
    return {"application/json": {"schema": schema}}


def handler(router: Router) -> Handler:
    """The handler of :data:`PATH` for ``router``: the document, built once on first use."""
    built: list[Json] = []

    async def h_openapi(s: Any, c: Call) -> Json:
        if not built:
            node = c.request.app.get(NODE_KEY)
            built.append(document(router, str(getattr(node, "version", "") or "")))
        return built[0]

    return h_openapi

