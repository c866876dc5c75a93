"""Prometheus metrics of one node, in a registry of its own (no globals).

Each tier exports only the families it has: every node the common ones of
:class:`NodeMetrics` (RPCs, refusals by reason, build information,
certificate expiry), and each tier's class (:class:`MunicipalMetrics`,
:class:`PrefectureMetrics`, :class:`NationalMetrics`,
:class:`GatewayMetrics`) the groups of its own work: :class:`DeliveryMetrics`
where a node pushes an outbox upward, :class:`ReceiverMetrics` where it
applies pushed notifications. Each family is defined once, in one group or
one tier class; a tier never carries a family it cannot fill (a national
``jukinet_code_pool_available 0`` would read as an empty pool).

Every label value comes from a closed set, so that no caller can create time
series by what it sends: agencies and purposes from the purpose registry the
node knows (anything else is :data:`UNKNOWN_LABEL`), operations and results
from :mod:`jukinet.vocabulary`, reasons from :mod:`jukinet.reasons`. The
``count_*`` methods apply the sets; call them rather than ``.labels(...)`` of
a family that takes a caller's value. The other families are closed by their
callers: methods are those the node serves (the interceptor wraps only
served handlers), origins are municipalities already authorized as senders
to the tier, peers are the tier's own senders (its municipalities, or the
prefectures), status codes are gRPC's, refusal reasons are
:class:`~jukinet.reasons.Reason` members, notification outcomes are literals,
``upstream`` is the one upstream the node is configured with, ``tier`` and
``version`` are the node's own, ``certificate`` is ``node`` or ``ca``.
"""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Final
from wsgiref.simple_server import WSGIServer

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jukinet.reasons import Reason
from jukinet.vocabulary import OPERATION_LABELS, RESULT_LABELS

UNKNOWN_LABEL = "(unknown)"
"""The one label value of anything outside a closed set."""

TIERS: Final = ("municipal", "prefecture", "national", "gateway")
"""The tiers a node can be (the ``tier`` label of ``jukinet_build_info``)."""

_REASONS = frozenset(r.value for r in Reason)
_OPERATIONS = frozenset(OPERATION_LABELS.values())
_RESULTS = frozenset(RESULT_LABELS.values())


def _version() -> str:
    try:
        return importlib.metadata.version("jukinet")
    except importlib.metadata.PackageNotFoundError:
        return UNKNOWN_LABEL


VERSION: Final = _version()
"""The installed jukinet version (the ``version`` label of ``jukinet_build_info``)."""


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


def _seconds_until(when: dt.datetime) -> float:
    return (when - dt.datetime.now(dt.UTC)).total_seconds()


class CertificateCollector(Collector):
    """Seconds until the node's certificate and the CA certificate expire, and
    until the next update of the CRL the node enforces, computed at each scrape."""

    def __init__(
        self,
        node_not_after: dt.datetime,
        ca_not_after: dt.datetime,
        crl_next_update: Callable[[], dt.datetime | None] | None,
    ) -> None:
        self._node = node_not_after
        self._ca = ca_not_after
        self._crl = crl_next_update

    def collect(self) -> Iterator[Metric]:
        """The expiry gauges, as of now."""
        expiry = GaugeMetricFamily(
            "jukinet_certificate_expiry_seconds",
            "Seconds until a certificate this node uses expires (node: its own, ca: the CA's)",
            labels=["certificate"],
        )
        expiry.add_metric(["node"], _seconds_until(self._node))
        expiry.add_metric(["ca"], _seconds_until(self._ca))
        yield expiry
        if self._crl is not None:
            next_update = self._crl()
            if next_update is not None:
                yield GaugeMetricFamily(
                    "jukinet_crl_next_update_seconds",
                    "Seconds until the next update the loaded CRL announces (negative: overdue)",
                    value=_seconds_until(next_update),
                )


class NodeMetrics:
    """The families every node exports; a tier's class adds its own.

    ``agencies`` and ``purposes`` are the registered codes the node may name in
    a label (:meth:`close_labels` sets them later); without them every agency
    and purpose is :data:`UNKNOWN_LABEL`.
    """

    tier: str = ""
    """The node's tier, one of :data:`TIERS` (set by each tier's class)."""

    def __init__(self, *, agencies: Iterable[str] = (), purposes: Iterable[str] = ()) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.agency_label = LabelSet(agencies)
        self.purpose_label = LabelSet(purposes)
        self.operation_label = LabelSet(_OPERATIONS)
        self.result_label = LabelSet(_RESULTS)
        self.reason_label = LabelSet(_REASONS)
        self._certificates: CertificateCollector | None = None
        build = Gauge(
            "jukinet_build_info",
            "The node's tier and software version",
            ["tier", "version"],
            registry=r,
        )
        build.labels(self.tier, VERSION).set(1)
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

    def close_labels(self, *, agencies: Iterable[str], purposes: Iterable[str]) -> None:
        """The registered agency and purpose codes labels may name from now on."""
        self.agency_label = LabelSet(agencies)
        self.purpose_label = LabelSet(purposes)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        """Count one finished RPC and its handling time (methods the node serves)."""
        self.rpcs.labels(method, code).inc()
        self.rpc_latency.labels(method).observe(seconds)

    def watch_certificates(
        self,
        *,
        node_cert: bytes,
        ca_cert: bytes,
        crl_next_update: Callable[[], dt.datetime | None] | None = None,
    ) -> None:
        """Export the expiry of the node's certificate and the CA's (PEM, as
        loaded), and the CRL's next update if the node loads a CRL. Once."""
        if self._certificates is not None:
            return
        node = x509.load_pem_x509_certificates(node_cert)[0]
        ca = x509.load_pem_x509_certificate(ca_cert)
        self._certificates = CertificateCollector(
            node.not_valid_after_utc, ca.not_valid_after_utc, crl_next_update
        )
        self.registry.register(self._certificates)

    def serve(self, listen: str) -> WSGIServer:
        """Serve /metrics over HTTP on host:port in a background thread."""
        host, port = listen.rsplit(":", 1)
        server, _thread = start_http_server(int(port), addr=host, registry=self.registry)
        return server


class UpstreamDelivery:
    """The delivery families' series of one upstream: what a pusher updates."""

    def __init__(self, group: DeliveryMetrics, upstream: str) -> None:
        self.upstream = upstream
        self.pushed = group.pushed.labels(upstream)
        self.reconnects = group.reconnects.labels(upstream)
        self.backlog = group.backlog.labels(upstream)
        self._oldest = group.oldest_age.labels(upstream)
        self._connected = group.connected.labels(upstream)
        self._oldest_at: float | None = None
        self._is_connected: Callable[[], bool] = lambda: False
        self._oldest.set_function(self.oldest_age)
        self._connected.set_function(lambda: 1.0 if self._is_connected() else 0.0)

    def set_outbox(self, backlog: int, oldest_unacknowledged: dt.datetime | None) -> None:
        """The outbox as just read: entries not acknowledged, and when the oldest was written."""
        self.backlog.set(backlog)
        self._oldest_at = (
            None
            if backlog == 0 or oldest_unacknowledged is None
            else oldest_unacknowledged.timestamp()
        )

    def oldest_age(self) -> float:
        """Seconds since the oldest unacknowledged entry was written (0: none)."""
        if self._oldest_at is None:
            return 0.0
        return max(0.0, time.time() - self._oldest_at)

    def connected_by(self, is_connected: Callable[[], bool]) -> None:
        """Read the connected state from ``is_connected`` at each scrape."""
        self._is_connected = is_connected


class DeliveryMetrics:
    """The families of a node that pushes its outbox upward, by upstream identity."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        up = ["upstream"]
        self.pushed = Counter(
            "jukinet_notifications_pushed",
            "Notifications acknowledged by the upstream",
            up,
            registry=r,
        )
        self.reconnects = Counter(
            "jukinet_push_reconnects",
            "Times the push stream to the upstream was re-established",
            up,
            registry=r,
        )
        self.backlog = Gauge(
            "jukinet_outbox_backlog",
            "Outbox entries the upstream has not acknowledged",
            up,
            registry=r,
        )
        self.oldest_age = Gauge(
            "jukinet_outbox_oldest_unacknowledged_seconds",
            "Age of the oldest outbox entry the upstream has not acknowledged (0: none)",
            up,
            registry=r,
        )
        self.connected = Gauge(
            "jukinet_upstream_connected",
            "1 while the push stream to the upstream is established, else 0",
            up,
            registry=r,
        )
        self._upstreams: dict[str, UpstreamDelivery] = {}

    def upstream(self, identity: str) -> UpstreamDelivery:
        """The series of the configured upstream ``identity`` (its URI)."""
        if identity not in self._upstreams:
            self._upstreams[identity] = UpstreamDelivery(self, identity)
        return self._upstreams[identity]


class ReceiverMetrics:
    """The families of a node that applies pushed notifications; ``peers``: the
    senders its clock-offset gauge may name (others are :data:`UNKNOWN_LABEL`)."""

    def __init__(self, registry: CollectorRegistry, *, peers: Iterable[str]) -> None:
        r = registry
        self.peer_label = LabelSet(peers)
        self.notifications = Counter(
            "jukinet_notifications",
            "Notifications received, by outcome (applied, duplicate, refused, quarantined)",
            ["outcome"],
            registry=registry,
        )
        self.delivery_lag = Histogram(
            "jukinet_delivery_lag_seconds",
            "Time from the municipal commit of a notification to its apply here",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.notification_conflicts = Counter(
            "jukinet_notification_conflicts",
            "Notifications refused because an applied one has the same origin and sequence "
            "but other content",
            registry=r,
        )
        self.peer_clock_offset = Gauge(
            "jukinet_peer_clock_offset_seconds",
            "This node's clock minus the send time a pushing peer stated, at the last batch "
            "(negative: the peer's clock runs ahead; includes the transfer time)",
            ["peer"],
            registry=r,
        )
        # Labelled by origin: a municipality whose notifications reached this
        # tier (through its prefecture, at the national node).
        self.certificate_contradictions = Counter(
            "jukinet_certificate_contradictions",
            "Notifications at the sequence that a move-out certificate named before they "
            "arrived which are not that resident's move-out (the origin signed a move-out "
            "it did not notify)",
            ["origin"],
            registry=r,
        )
        # Labelled by origin: a municipality the receiver has authorized as a
        # sender to this tier, so the set is the tier's own municipalities.
        self.unappliable = Counter(
            "jukinet_unappliable_notifications",
            "Valid notifications this tier's store could not apply, counted once per "
            "(origin, sequence)",
            ["origin"],
            registry=r,
        )
        self.stuck_sequence = Gauge(
            "jukinet_unappliable_sequence",
            "The sequence of the origin's notification that cannot be applied now (0: none)",
            ["origin"],
            registry=r,
        )


class StorageMetrics:
    """The storage family of a node with a database."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.storage_full = Counter(
            "jukinet_storage_full",
            "Database operations refused because the database's storage is full",
            registry=registry,
        )

    def count_full(self) -> None:
        """Count one database operation refused because the storage is full."""
        self.storage_full.inc()


RELAY_KINDS = ("move-in-notice", "move-out-data", "copy")
"""The kinds of relayed request a label names (jukinet.relay.header.KIND_LABELS)."""
RELAY_OUTCOMES = ("ok", "refused", "failed")
"""How a relayed request ended at a node: answered (or passed on and answered),
refused (by this node or a later one, or answered with a refusal), failed
(a node further on could not be reached)."""


class RelayMetrics:
    """Requests relayed between municipalities, as seen by one node (every tier)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.kind_label = LabelSet(RELAY_KINDS)
        self.outcome_label = LabelSet(RELAY_OUTCOMES)
        self.requests = Counter(
            "jukinet_relayed_requests",
            "Requests relayed between municipalities that this node sent, passed on or "
            "answered, by kind and outcome",
            ["kind", "outcome"],
            registry=registry,
        )

    def count(self, kind: str, outcome: str) -> None:
        """Count one request of ``kind`` that ended in ``outcome`` here."""
        self.requests.labels(self.kind_label(kind), self.outcome_label(outcome)).inc()


def _codes_issued(registry: CollectorRegistry) -> Counter:
    return Counter(
        "jukinet_codes_issued", "Resident codes minted or handed down", registry=registry
    )


class MunicipalMetrics(NodeMetrics):
    """A municipal node: notifications written, its code pool, delivery to its prefecture."""

    tier = "municipal"

    def __init__(self) -> None:
        super().__init__()
        r = self.registry
        self.notifications_written = Counter(
            "jukinet_notifications_written", "Notifications written by this node", registry=r
        )
        self.code_pool = Gauge(
            "jukinet_code_pool_available", "Unused resident codes in the pool", registry=r
        )
        self.delivery = DeliveryMetrics(r)
        self.storage = StorageMetrics(r)
        self.relay = RelayMetrics(r)


class PrefectureMetrics(NodeMetrics):
    """A prefecture node: notifications received, codes handed down, relay to the national node."""

    tier = "prefecture"

    def __init__(self, *, peers: Iterable[str] = ()) -> None:
        super().__init__()
        self.receiver = ReceiverMetrics(self.registry, peers=peers)
        self.delivery = DeliveryMetrics(self.registry)
        self.codes_issued = _codes_issued(self.registry)
        self.storage = StorageMetrics(self.registry)
        self.relay = RelayMetrics(self.registry)


class AgencyMetrics(NodeMetrics):
    """What the nodes serving agencies (national, gateway) export about them."""

    def __init__(self, *, agencies: Iterable[str] = (), purposes: Iterable[str] = ()) -> None:
        super().__init__(agencies=agencies, purposes=purposes)
        self.provisions = Counter(
            "jukinet_provisions",
            "Answers recorded for agencies, by agency, purpose, operation and result",
            ["agency", "purpose", "operation", "result"],
            registry=self.registry,
        )

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


PREFECTURE_CODES = tuple(f"{i:02d}" for i in range(1, 48))
"""The senders of the national node: the 47 prefectures."""


class NationalMetrics(AgencyMetrics):
    """The national node: notifications received, codes minted, provisions."""

    tier = "national"

    def __init__(self, *, agencies: Iterable[str] = (), purposes: Iterable[str] = ()) -> None:
        super().__init__(agencies=agencies, purposes=purposes)
        self.receiver = ReceiverMetrics(self.registry, peers=PREFECTURE_CODES)
        self.codes_issued = _codes_issued(self.registry)
        self.storage = StorageMetrics(self.registry)
        self.relay = RelayMetrics(self.registry)


class GatewayMetrics(AgencyMetrics):
    """The agency gateway: provisions, its refusals and its handling time."""

    tier = "gateway"

    def __init__(self, *, agencies: Iterable[str] = (), purposes: Iterable[str] = ()) -> None:
        super().__init__(agencies=agencies, purposes=purposes)
        r = self.registry
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

    def count_gateway_denial(self, agency: str, purpose: str, operation: str, reason: str) -> None:
        """Count one agency request the gateway refused."""
        self.gateway_denials.labels(
            self.agency_label(agency),
            self.purpose_label(purpose),
            self.operation_label(operation),
            self.reason_label(reason),
        ).inc()


def stop_metrics_server(server: WSGIServer) -> None:
    """Stop a server started by :meth:`NodeMetrics.serve`."""
    threading.Thread(target=server.shutdown, daemon=True).start()
    server.server_close()
