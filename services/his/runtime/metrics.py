"""Prometheus RED metrics per method, named as go-grpc-prometheus names them so that the
dashboards and alerts SREs already have work unchanged."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

# Buckets around the hospital's 200 ms P99 target, fine-grained where our calls actually land.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0)


@dataclass(frozen=True)
class ServerMetrics:
    """The metric families one server records; each server owns its registry."""

    registry: CollectorRegistry
    started: Counter
    handled: Counter
    handling_seconds: Histogram
    in_flight: Gauge
    database_up: Gauge

    @classmethod
    def create(cls) -> ServerMetrics:
        """Fresh metric families in their own registry (several servers may share a process)."""
        registry = CollectorRegistry()
        labels = ("grpc_type", "grpc_service", "grpc_method")
        return cls(
            registry=registry,
            started=Counter(
                "grpc_server_started", "RPCs started on the server.", labels, registry=registry
            ),
            handled=Counter(
                "grpc_server_handled",
                "RPCs completed on the server, by status code.",
                (*labels, "grpc_code"),
                registry=registry,
            ),
            handling_seconds=Histogram(
                "grpc_server_handling_seconds",
                "Time from receiving an RPC to its status being sent.",
                labels,
                buckets=_BUCKETS,
                registry=registry,
            ),
            in_flight=Gauge(
                "grpc_server_in_flight", "RPCs being handled right now.", registry=registry
            ),
            database_up=Gauge(
                "his_database_up",
                "1 while the service's database answers pings.",
                registry=registry,
            ),
        )

    def serve(self, port: int) -> MetricsEndpoint:
        """Expose the registry over HTTP on `port` (0 = any free port)."""
        server, thread = start_http_server(port, registry=self.registry)
        return MetricsEndpoint(server=server, thread=thread)


@dataclass(frozen=True)
class MetricsEndpoint:
    """The running `/metrics` HTTP server (a thread beside the event loop)."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.server.server_port)

    def close(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
