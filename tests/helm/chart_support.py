"""Render the Helm chart in ``helm/tasks`` with the real Helm engine.

The engine is Helm v4's own Go SDK, reached through ``helm-python-sdk``
(``helm_python``): templates, ``values.schema.json`` checks and ``helm lint``
behave exactly as ``helm install`` would, without a ``helm`` binary or a
cluster. Offline, ``lookup`` finds nothing, so generated secrets are new on
every render.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import helm_python as helm
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART_DIR = REPO / "helm" / "tasks"
RELEASE = "tasks"
NAMESPACE = "tasks-test"


def render(
    values: dict[str, Any] | None = None, *, name: str = RELEASE, namespace: str = NAMESPACE
) -> dict[str, str]:
    """Every rendered template, keyed by its path (``tasks/templates/x.yaml``).

    Raises ``helm_python.HelmError`` (``HelmValuesError`` for values the schema
    rejects) exactly where ``helm install`` would refuse.
    """
    with helm.Chart.load(CHART_DIR) as chart:
        return chart.render(values, name=name, namespace=namespace, is_install=True)


def manifest_text(rendered: dict[str, str]) -> str:
    """The manifests as ``helm template`` prints them: one YAML stream, NOTES left out."""
    parts = []
    for path in sorted(rendered):
        if path.endswith("NOTES.txt") or not rendered[path].strip():
            continue
        parts.append(f"---\n# Source: {path}\n{rendered[path].strip()}\n")
    return "".join(parts)


def manifests(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a render, parsed (empty documents dropped)."""
    return [doc for doc in yaml.safe_load_all(manifest_text(rendered)) if doc]


def objects(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The single object of ``kind``; fails the test when there are 0 or several."""
    found = objects(docs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def by_name(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    for doc in objects(docs, kind):
        if doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} named {name!r}")
