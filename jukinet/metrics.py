"""Prometheus metrics of one node, in a registry of its own (no globals)."""

from __future__ import annotations

import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class NodeMetrics:
    """Every metric a node exports; unused ones simply stay at zero."""

    def __init__(self, tier: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tier = tier
        self.rpcs = Counter(
            "jukinet_rpcs", "RPCs handled, by method and status", ["method", "code"], registry=r
        )
        self.rpc_latency = Histogram(
            "jukinet_rpc_seconds",
            "RPC handling time",
            ["method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.denials = Counter(
            "jukinet_denials",
            "Calls refused, by method and reason",
            ["method", "reason"],
            registry=r,
        )
        self.notifications = Counter(
            "jukinet_notifications",
            "Notifications received, by outcome (applied, duplicate, refused)",
            ["outcome"],
            registry=r,
        )
        self.notifications_written = Counter(
            "jukinet_notifications_written", "Notifications written by this node", registry=r
        )
        self.notifications_pushed = Counter(
            "jukinet_notifications_pushed",
            "Notifications acknowledged by the next tier",
            registry=r,
        )
        self.outbox_backlog = Gauge(
            "jukinet_outbox_backlog", "Outbox entries not yet acknowledged", registry=r
        )
        self.push_reconnects = Counter(
            "jukinet_push_reconnects", "Times the push stream was re-established", registry=r
        )
        self.delivery_lag = Histogram(
            "jukinet_delivery_lag_seconds",
            "Time from the municipal commit of a notification to its apply here",
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        self.code_pool = Gauge(
            "jukinet_code_pool_available", "Unused resident codes in the pool", registry=r
        )
        self.provisions = Counter(
            "jukinet_provisions",
            "Answers recorded for agencies, by agency, purpose, operation and result",
            ["agency", "purpose", "operation", "result"],
            registry=r,
        )
        self.codes_issued = Counter(
            "jukinet_codes_issued", "Resident codes minted or handed down", registry=r
        )
        self.gateway_denials = Counter(
            "jukinet_gateway_denials",
            "Agency requests the gateway refused, by agency, purpose, operation and reason",
            ["agency", "purpose", "operation", "reason"],
            registry=r,
        )
        self.gateway_latency = Histogram(
            "jukinet_gateway_operation_seconds",
            "Gateway handling time of one agency operation (a VerifyBatch message), "
            "national call included",
            ["operation"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one finished RPC and its handling time."""
        self.rpcs.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)

    def serve(self, listen: str) -> WSGIServer:
        """Serve /metrics over HTTP on host:port in a background thread."""
        host, port = listen.rsplit(":", 1)
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        return server


def stop_metrics_server(server: WSGIServer) -> None:
    """Stop a server started by :meth:`NodeMetrics.serve`."""
    threading.Thread(target=server.shutdown, daemon=True).start()
    server.server_close()
