"""Prometheus metrics of one node, in a registry of its own (no globals).

Every label value comes from a closed set, so that no caller can create time
series by what it sends: agencies and purposes from the purpose registry the
node knows (anything else is :data:`UNKNOWN_LABEL`), operations and results
from :mod:`jukinet.vocabulary`, reasons from :mod:`jukinet.reasons`. The
``count_*`` methods apply the sets; call them rather than ``.labels(...)`` of
a family that takes a caller's value. The other families are closed by their
callers: methods are those the node serves (the interceptor wraps only
served handlers), status codes are gRPC's, refusal reasons are
:class:`~jukinet.reasons.Reason` members, notification outcomes are literals.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from jukinet.reasons import Reason
from jukinet.vocabulary import OPERATION_LABELS, RESULT_LABELS

UNKNOWN_LABEL = "(unknown)"
"""The one label value of anything outside a closed set."""

_REASONS = frozenset(r.value for r in Reason)
_OPERATIONS = frozenset(OPERATION_LABELS.values())
_RESULTS = frozenset(RESULT_LABELS.values())


class LabelSet:
    """A closed set of label values; any other value is :data:`UNKNOWN_LABEL`."""

    __slots__ = ("values",)

    def __init__(self, values: Iterable[str] = ()) -> None:
        self.values = frozenset(values)

    def __call__(self, value: str) -> str:
        """``value`` if the set holds it, else :data:`UNKNOWN_LABEL`."""
        return value if value in self.values else UNKNOWN_LABEL


_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class NodeMetrics:
    """Every metric a node exports; unused ones simply stay at zero.

    ``agencies`` and ``purposes`` are the registered codes the node may name in
    a label (:meth:`close_labels` sets them later); without them every agency
    and purpose is :data:`UNKNOWN_LABEL`.
    """

    def __init__(
        self, tier: str, *, agencies: Iterable[str] = (), purposes: Iterable[str] = ()
    ) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.tier = tier
        self.agency_label = LabelSet(agencies)
        self.purpose_label = LabelSet(purposes)
        self.operation_label = LabelSet(_OPERATIONS)
        self.result_label = LabelSet(_RESULTS)
        self.reason_label = LabelSet(_REASONS)
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
            "Notifications received, by outcome (applied, duplicate, refused, quarantined)",
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

    def close_labels(self, *, agencies: Iterable[str], purposes: Iterable[str]) -> None:
        """The registered agency and purpose codes labels may name from now on."""
        self.agency_label = LabelSet(agencies)
        self.purpose_label = LabelSet(purposes)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one finished RPC and its handling time (methods the node serves)."""
        self.rpcs.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)

    def count_provisions(
        self, agency: str, purpose: str, operation: str, result: str, n: int = 1
    ) -> None:
        """Count ``n`` answers (or refusals) recorded for an agency."""
        self.provisions.labels(
            self.agency_label(agency),
            self.purpose_label(purpose),
            self.operation_label(operation),
            self.result_label(result),
        ).inc(n)

    def count_gateway_denial(self, agency: str, purpose: str, operation: str, reason: str) -> None:
        """Count one agency request the gateway refused."""
        self.gateway_denials.labels(
            self.agency_label(agency),
            self.purpose_label(purpose),
            self.operation_label(operation),
            self.reason_label(reason),
        ).inc()

    def serve(self, listen: str) -> WSGIServer:
        """Serve /metrics over HTTP on host:port in a background thread."""
        host, port = listen.rsplit(":", 1)
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        return server


def stop_metrics_server(server: WSGIServer) -> None:
    """Stop a server started by :meth:`NodeMetrics.serve`."""
    threading.Thread(target=server.shutdown, daemon=True).start()
    server.server_close()
