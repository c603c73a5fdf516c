"""The JSON shapes of the HTTP API (SPEC §4, §5.1) as OpenAPI 3.1 schemas.

Kept apart from ``openapi`` (which turns the route table into operations) so
that one file says what goes over the wire and the other where. The schemas
describe what the server accepts and answers; they are deliberately open
(extra fields are allowed): the server ignores fields it does not know, and
the contract for validation is the 400 with a message naming the field.
"""

from __future__ import annotations

from typing import Any

from hanzo_tasks.protocol.errors import CODE_STATUS

Schema = dict[str, Any]


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(props: dict[str, Schema], required: tuple[str, ...] = (), **extra: Any) -> Schema:
    out: Schema = {"type": "object", "properties": props}
    if required:
        out["required"] = list(required)
    out.update(extra)
    return out


def page_of(field: str, item: Schema) -> Schema:
    """A list response (SPEC §4.1 Paging): the items and ``nextPageToken`` (``""`` at the end)."""
    return obj({field: {"type": "array", "items": item}, "nextPageToken": {"type": "string"}},
               (field, "nextPageToken"))


STR: Schema = {"type": "string"}
BOOL: Schema = {"type": "boolean"}
INT: Schema = {"type": "integer"}
ANY: Schema = {}
TIME: Schema = {"type": "string", "format": "date-time"}
DURATION: Schema = {"type": "string", "description": "a duration such as \"10s\", \"1m30s\" or \"720h\"",
                    "examples": ["10s"]}
ID: Schema = {"type": "string", "pattern": "^[^/\\u0000-\\u001f\\u007f-\\u009f]{1,255}$",
              "not": {"enum": [".", ".."]},
              "description": "an Id (SPEC §1): 1-255 bytes of UTF-8, no control characters, no /, "
                             "not . or .."}
NAMED: Schema = {"oneOf": [obj({"name": ID}, ("name",)), ID],
                 "description": "{\"name\": ...}; a bare string is accepted too"}
STATUS: Schema = {"type": "string", "description": "WORKFLOW_EXECUTION_STATUS_ + RUNNING, CANCELING, COMPLETED, "
                                                   "FAILED, CANCELED, TERMINATED, TIMED_OUT or CONTINUED_AS_NEW"}
RUN_ID: Schema = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
REQUEST_ID: Schema = {"type": "string", "pattern": "^[\\x21-\\x7e]{1,128}$"}
STATUS_ONLY: Schema = obj({"status": STR}, ("status",))


SCHEMAS: dict[str, Schema] = {
    "Error": obj({
        "code": {"type": "string", "enum": sorted(CODE_STATUS)},
        "message": STR,
        "details": {"type": "object"},
    }, ("code", "message"), description="Every non-2xx answer (SPEC §4.1)."),
    "Execution": obj({"workflowId": STR, "runId": STR}, ("workflowId", "runId")),
    "Failure": obj({"message": STR, "type": STR, "nonRetryable": BOOL, "details": ANY, "stackTrace": STR,
                    "timeoutType": STR}),
    "RetryPolicy": obj({"initialInterval": DURATION, "backoffCoefficient": {"type": "number"},
                        "maximumInterval": DURATION, "maximumAttempts": INT,
                        "nonRetryableErrorTypes": {"type": "array", "items": STR}}),
    "WorkflowExecution": obj({
        "execution": ref("Execution"), "type": obj({"name": STR}), "taskQueue": STR, "status": STATUS,
        "startTime": TIME, "closeTime": TIME, "historyLength": INT, "attempt": INT, "input": ANY,
        "result": ANY, "lastFailure": ref("Failure"), "memo": {"type": "object"},
        "searchAttrs": {"type": "object"}, "userMetadata": {"type": "object"},
        "retryPolicy": ref("RetryPolicy"), "workflowExecutionTimeout": DURATION,
        "workflowRunTimeout": DURATION, "workflowTaskTimeout": DURATION, "continuedFromRunId": STR,
        "nextRunId": STR, "resetFrom": {"type": "object"}, "scheduleId": STR, "deadLetterReason": STR,
        "started": {"type": "boolean", "description": "start and signal-with-start only"},
    }, ("execution", "type", "status"), description="A run (SPEC §5.1)."),
    "StartWorkflow": obj({
        "workflowId": ID, "runId": RUN_ID, "workflowType": NAMED, "taskQueue": NAMED, "input": ANY,
        "requestId": REQUEST_ID,
        "workflowIdConflictPolicy": {"type": "string",
                                     "description": "WORKFLOW_ID_CONFLICT_POLICY_ + FAIL (default), "
                                                    "USE_EXISTING or TERMINATE_EXISTING"},
        "workflowExecutionTimeout": DURATION, "workflowRunTimeout": DURATION, "workflowTaskTimeout": DURATION,
        "retryPolicy": ref("RetryPolicy"), "memo": {"type": "object"},
        "searchAttributes": {"type": "object"}, "identity": STR,
    }, ("workflowType",), description="SPEC §5.3."),
    "SignalWithStart": {"allOf": [ref("StartWorkflow"), obj(
        {"signalName": ID, "signalPayload": ANY, "signalInput": ANY}, ("signalName",))]},
    "DescribeWorkflow": obj({
        "workflowExecutionInfo": ref("WorkflowExecution"),
        "executionConfig": obj({"taskQueue": obj({"name": STR}), "workflowExecutionTimeout": DURATION,
                                "workflowRunTimeout": DURATION, "workflowTaskTimeout": DURATION,
                                "retryPolicy": ref("RetryPolicy")}),
        "pendingActivities": {"type": "array", "items": {"type": "object"}},
        "pendingWorkflowTask": {"type": "object"},
    }, ("workflowExecutionInfo",)),
    "Signal": obj({"name": ID, "payload": ANY, "input": ANY, "identity": STR, "requestId": REQUEST_ID},
                  ("name",)),
    "Reason": obj({"reason": STR, "identity": STR}),
    "Query": obj({"queryType": STR, "args": ANY, "timeout": DURATION}, ("queryType",)),
    "QueryResult": obj({"queryResult": ANY}, ("queryResult",)),
    "WorkflowMetadata": obj({"summary": STR, "details": STR, "updatedBy": STR}),
    "Reset": obj({"runId": RUN_ID, "eventId": INT, "reason": STR, "identity": STR,
                  "requestId": REQUEST_ID}, ("eventId",)),
    "History": obj({"events": {"type": "array", "items": obj(
        {"eventId": INT, "eventTime": TIME, "eventType": STR, "attributes": {"type": "object"}})},
        "nextPageToken": STR, "nextCursor": ANY}, ("events", "nextPageToken")),
    "WorkflowResult": obj({
        "status": STATUS, "runId": STR, "result": ANY, "failure": ref("Failure"), "nextRunId": STR,
    }, ("status", "runId"), description="200 once the run is closed; 202 with status RUNNING while open "
                                        "(ask again)."),
    "Namespace": obj({
        "namespaceInfo": obj({"name": STR, "state": STR, "description": STR, "ownerEmail": STR,
                              "region": STR, "createTime": TIME, "updateTime": TIME}, ("name",)),
        "config": obj({"workflowExecutionRetentionTtl": DURATION, "apsLimit": INT,
                       "historyArchivalState": STR, "historyArchivalUri": STR,
                       "visibilityArchivalState": STR, "visibilityArchivalUri": STR,
                       "customData": {"type": "object", "additionalProperties": STR}}),
        "isActive": BOOL,
    }, ("namespaceInfo",), description="SPEC §5.1; on create only namespaceInfo.name is required."),
    "NamespaceUpdate": obj({
        "description": STR, "ownerEmail": STR, "retention": DURATION, "apsLimit": INT,
        "historyArchivalState": STR, "historyArchivalUri": STR, "visibilityArchivalState": STR,
        "visibilityArchivalUri": STR, "customData": {"type": "object", "additionalProperties": STR},
    }),
    "Schedule": obj({
        "scheduleId": ID, "namespace": STR,
        "spec": obj({"cronString": {"type": "array", "items": STR},
                     "interval": {"type": "array", "items": obj({"interval": DURATION, "phase": DURATION},
                                                                ("interval",))},
                     "startTime": TIME, "endTime": TIME, "jitter": DURATION, "timezone": STR}),
        "action": obj({"workflowType": NAMED, "taskQueue": NAMED, "input": ANY,
                       "workflowExecutionTimeout": DURATION, "workflowRunTimeout": DURATION,
                       "workflowTaskTimeout": DURATION, "retryPolicy": ref("RetryPolicy"),
                       "memo": {"type": "object"}, "searchAttributes": {"type": "object"}}),
        "policies": obj({"overlapPolicy": STR, "catchupWindow": DURATION, "pauseOnFailure": BOOL}),
        "state": obj({"paused": BOOL, "note": STR, "limitedActions": BOOL, "remainingActions": INT}),
        "info": {"type": "object", "description": "server-owned; ignored when sent"},
    }, description="SPEC §5.8; on create scheduleId, spec and action are required."),
    "ScheduleTrigger": obj({"requestId": REQUEST_ID, "overlapPolicy": STR}),
    "TriggerResult": obj({"status": {"type": "string", "enum": ["triggered", "skipped", "buffered"]},
                          "execution": ref("WorkflowExecution")}, ("status",)),
    "Note": obj({"note": STR}),
    "MatchingTimes": obj({"matchingTimes": {"type": "array", "items": TIME, "maxItems": 1000}},
                         ("matchingTimes",)),
    "BatchStart": obj({"operation": STR, "query": STR, "reason": STR,
                       "signal": obj({"name": STR, "input": ANY}, ("name",)), "rps": {"type": "number"},
                       "requestId": REQUEST_ID}, ("operation", "query")),
    "BatchOperation": obj({
        "batchId": STR, "namespace": STR, "operation": STR, "reason": STR, "query": STR,
        "signal": {"type": "object"}, "state": STR, "startTime": TIME, "closeTime": TIME,
        "totalOperationCount": INT, "completeOperationCount": INT, "failureOperationCount": INT,
        "identity": STR, "rps": {"type": "number"},
    }, ("batchId", "state")),
    "DeploymentCreate": obj({"name": ID, "description": STR, "ownerEmail": STR,
                             "defaultCompute": ANY}, ("name",)),
    "DeploymentUpdate": obj({"description": STR, "ownerEmail": STR, "defaultCompute": ANY}),
    "Deployment": obj({"name": STR, "namespace": STR, "description": STR, "ownerEmail": STR,
                       "defaultCompute": ANY,
                       "versions": {"type": "array", "items": ref("DeploymentVersion")},
                       "defaultBuildId": STR, "createTime": TIME, "updateTime": TIME}, ("name",)),
    "VersionCreate": obj({"buildId": ID, "description": STR, "compute": ANY, "image": STR,
                          "env": ANY}, ("buildId",)),
    "VersionUpdate": obj({"description": STR, "compute": ANY, "image": STR,
                          "env": ANY}),
    "DeploymentVersion": obj({"buildId": STR, "state": STR, "description": STR, "compute": ANY,
                              "image": STR, "env": ANY, "createTime": TIME,
                              "updateTime": TIME}, ("buildId",)),
    "SetCurrent": obj({"buildId": ID}, ("buildId",)),
    "Validation": obj({"networkOk": BOOL, "workerRegistered": BOOL, "heartbeatReceived": BOOL,
                       "latencyMs": {"type": "number"}, "errors": {"type": "array", "items": STR}},
                      ("networkOk", "workerRegistered", "heartbeatReceived", "latencyMs", "errors")),
    "NexusEndpoint": obj({"name": STR, "namespace": STR, "description": STR, "target": ANY,
                          "createTime": TIME}, ("name",)),
    "Identity": obj({"email": STR, "namespace": STR,
                     "role": {"type": "string", "enum": ["viewer", "developer", "admin", "owner"]},
                     "grantTime": TIME}, ("email", "role")),
    "SearchAttribute": obj({"name": STR, "type": {"type": "string", "enum": [
        "Keyword", "Text", "Int", "Double", "Bool", "Datetime", "KeywordList"]}}, ("name", "type")),
    "ActivityStart": obj({
        "activityId": ID, "runId": RUN_ID, "activityType": NAMED, "taskQueue": ID, "input": ANY,
        "retryPolicy": ref("RetryPolicy"), "scheduleToCloseTimeout": DURATION,
        "scheduleToStartTimeout": DURATION, "startToCloseTimeout": DURATION, "heartbeatTimeout": DURATION,
        "identity": STR, "requestId": REQUEST_ID,
    }, ("activityId", "activityType")),
    "StandaloneActivity": obj({"execution": ref("Execution"), "type": obj({"name": STR}), "taskQueue": STR,
                               "status": STR, "startTime": TIME, "closeTime": TIME, "attempt": INT,
                               "input": ANY, "result": ANY, "lastFailure": ref("Failure"),
                               "started": BOOL}, ("execution", "status")),
    "ActivityComplete": obj({"result": ANY, "identity": STR}),
    "ActivityFail": obj({"cause": ANY, "identity": STR, "nonRetryable": BOOL}),
    "ActivityHeartbeat": obj({"details": ANY}),
    "TaskQueue": obj({"name": STR, "workflows": ANY, "running": INT, "total": INT, "latestStart": TIME,
                      "backlog": obj({"workflowTasks": INT, "activityTasks": INT, "oldestAge": ANY}),
                      "workers": ANY}, ("name",)),
    "Worker": obj({"identity": STR, "namespace": STR, "taskQueue": STR, "sdkName": STR, "sdkVersion": STR,
                   "buildId": STR, "firstSeen": TIME, "lastHeartbeat": TIME,
                   "subscriptions": {"type": "array", "items": {"type": "object"}}}, ("identity",)),
    "Job": obj({"id": STR, "org": STR, "namespace": STR, "from": STR, "to": STR, "status": STR,
                "startedAt": TIME, "finishedAt": {"type": ["string", "null"]},
                "error": {"type": ["string", "null"]}}, ("id", "status"),
               description="A migration job (SPEC §4.10)."),
    "Migrate": obj({"toNode": STR, "toPartition": INT}),
    "MemberAdd": obj({"nodeId": STR, "peer": STR, "http": STR, "zap": STR}, ("nodeId", "peer")),
    "Health": obj({"service": STR, "status": STR, "nodeId": STR, "namespace": STR}, ("status", "nodeId")),
    "Settings": obj({"version": STR, "nodeId": STR, "zapAddr": {"type": ["string", "null"]},
                     "authRequired": BOOL, "namespaceWriteDisabled": BOOL, "capabilities": {"type": "object"}},
                    ("version", "nodeId")),
    "Cluster": obj({"nodeId": STR, "version": STR, "replicator": STR, "members": {"type": "array"},
                    "metaLeader": {"type": ["string", "null"]}, "partitions": {"type": "array"},
                    "namespaces": {"type": "array"}, "stats": {"type": "object"},
                    "nextPageToken": STR}, ("nodeId",), description="SPEC §4.9."),
    "ClusterHealth": obj({"status": STR, "nodeId": STR, "groups": INT, "reasons": {"type": "array"}},
                         ("status",)),
    "JsonRpc": obj({"jsonrpc": STR, "id": ANY, "method": STR, "params": ANY},
                   description="An MCP JSON-RPC 2.0 message (SPEC §7)."),
}
