"""Prometheus metrics, in a registry per app (two apps in one process, as in tests, never collide)."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

access_log = logging.getLogger("clipmc.access")
_QUIET_ROUTES = ("/healthz", "/readyz", "/metrics")  # probes and scrapes: debug level, not info

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """The service's metrics; all series are prefixed ``clipmc_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "clipmc_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "clipmc_http_request_duration_seconds",
            "HTTP request latency by route template, method and status",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "clipmc_embedding_batch_size", "Crops per model call (dynamic batching)", buckets=_BATCH_BUCKETS, registry=r
        )
        self.embed_latency = Histogram(
            "clipmc_embedding_duration_seconds", "Model call latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.queue_wait = Histogram(
            "clipmc_embedding_queue_wait_seconds",
            "Time a crop waits in the batching queue before its model call starts",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("clipmc_embedding_queue_depth", "Crops waiting for a model call", registry=r)
        self.search_latency = Histogram(
            "clipmc_search_duration_seconds", "Gallery search latency", buckets=_LATENCY_BUCKETS, registry=r
        )
        self.gallery_items = Gauge("clipmc_gallery_items", "Items in the gallery", registry=r)
        self.ready = Gauge("clipmc_ready", "1 when the model is warmed up and the gallery loaded", registry=r)
        self.erased = Counter(
            "clipmc_erased_items",
            "Gallery items erased, by reason (delete, filter, retention)",
            ["reason"],
            registry=r,
        )
        self.compactions = Counter(
            "clipmc_gallery_compactions", "Compactions that took removed items off the disk", registry=r
        )
        self.maintenance_errors = Counter(
            "clipmc_maintenance_errors", "Failed retention or compaction runs (retried at the next run)", registry=r
        )
        self.info = Gauge(
            "clipmc_model_info", "The served model", ["embedding_version", "backend", "embedding_dim"], registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts, times and logs every HTTP request by its route template (bounded label values)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes  # the app's route list, to name routes the router does not record in the scope

    def _template(self, scope: Scope) -> str:
        route = scope.get("route")
        if route is None and scope.get("endpoint") is not None:
            route = next((r for r in self.routes if getattr(r, "endpoint", None) is scope["endpoint"]), None)
        path = getattr(route, "path", None)
        if path is not None:
            return path
        return "/static" if scope["path"].startswith("/static/") else "unmatched"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            template = self._template(scope)
            elapsed = time.perf_counter() - start
            labels = (template, scope["method"], str(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(elapsed)
            principal = scope.get("state", {}).get("principal")
            client = scope.get("client")
            access_log.log(
                logging.DEBUG if template in _QUIET_ROUTES else logging.INFO,
                "%s %s %d %.1f ms",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000.0,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000.0, 3),
                    "client": client[0] if client else None,
                    "key": getattr(principal, "name", None),
                },
            )
