"""HTTP face of namespace migration (SPEC §4.10): the migrate route and job records."""

from __future__ import annotations

from typing import Any

from hanzo_tasks.cluster.api.http.request import node_of
from hanzo_tasks.cluster.service import inputs as I
from hanzo_tasks.cluster.service import render
from hanzo_tasks.protocol import names
from hanzo_tasks.protocol.errors import ApiError
from hanzo_tasks.protocol.names import ADMIN, VIEWER

Json = dict[str, Any]

JOB_TIMES = ("startedAt", "finishedAt")


def job(rec: Json) -> Json:
    """A job record as the API shows it (times in RFC 3339)."""
    out = {k: rec.get(k) for k in ("id", "org", "namespace", "from", "to", "fromPartition", "toPartition",
                                     "placementEpoch", "status", "snapshotIndex", "tailEntries", "bytes",
                                     "fencedMs", "startedAt", "finishedAt", "error")}
    for f in JOB_TIMES:
        out[f] = render.t(out[f]) if out[f] is not None else None
    out["org"] = "" if out["org"] == "_" else out["org"]
    return out


async def h_migrate(s: Any, c: Any) -> Json:
    node = node_of(c)
    if node.migrations is None:
        raise ApiError("unavailable", "migration is not running on this node", retry_after=1)
    return job(await node.migrate(c.org, c.params["ns"], c.body()))


async def h_list(s: Any, c: Any) -> Json:
    node = node_of(c)
    size = I.page_size(c.query)
    after = I.read_token(c.query.get("nextPageToken"), "migrations", c.org)
    jobs = [j for j in node.migrations.jobs() if j["org"] == c.org] if node.migrations else []
    if after is not None:
        jobs = [j for j in jobs if j["id"].encode() > after]
    jobs.sort(key=lambda j: j["id"])
    page = jobs[:size]
    more = len(jobs) > size
    return {"jobs": [job(j) for j in page],
            "nextPageToken": I.make_token("migrations", c.org, page[-1]["id"].encode() if more else None)}


async def h_get(s: Any, c: Any) -> Json:
    node = node_of(c)
    jid = names.check_id(c.params["id"], "migration id")
    rec = node.migrations.job(jid) if node.migrations else None
    if rec is None or rec["org"] != c.org:
        raise ApiError("not_found", f"migration {jid} not found")
    return job(rec)


def add_routes(r: Any, ns: str) -> None:
    r.add("POST", ns + "/migrate", h_migrate, status=202, role=ADMIN)
    r.add("GET", "/v1/tasks/migrations", h_list, role=VIEWER)
    r.add("GET", "/v1/tasks/migrations/{id}", h_get, role=VIEWER)
