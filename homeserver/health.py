"""The metrics listener: Prometheus `/metrics` and a `/health` probe."""

from __future__ import annotations

from typing import Any

from prometheus_client.twisted import MetricsResource
from twisted.web import resource


class HealthResource(resource.Resource):
    isLeaf = True

    def render_GET(self, request: object) -> bytes:
        request.setHeader(b"Content-Type", b"text/plain")  # type: ignore[attr-defined]
        return b"OK"


def build_metrics_root() -> resource.Resource:
    root = resource.Resource()
    children: dict[bytes, Any] = {b"metrics": MetricsResource(), b"health": HealthResource()}
    for path, child in children.items():
        root.putChild(path, child)
    return root
