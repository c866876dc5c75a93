"""Each tier's metrics hold exactly the families written out here, and the
operations page lists the same families per tier."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path

import pytest

from jukinet.metrics import (
    TIERS,
    GatewayMetrics,
    MunicipalMetrics,
    NationalMetrics,
    NodeMetrics,
    PrefectureMetrics,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "operations.md"

COMMON = {
    "jukinet_build_info",
    "jukinet_rpcs",
    "jukinet_rpc_seconds",
    "jukinet_denials",
    "jukinet_certificate_expiry_seconds",
    "jukinet_crl_next_update_seconds",
}
DELIVERY = {
    "jukinet_outbox_backlog",
    "jukinet_outbox_oldest_unacknowledged_seconds",
    "jukinet_upstream_connected",
    "jukinet_notifications_pushed",
    "jukinet_push_reconnects",
}
RECEIVER = {
    "jukinet_notifications",
    "jukinet_delivery_lag_seconds",
    "jukinet_notification_conflicts",
    "jukinet_certificate_contradictions",
    "jukinet_peer_clock_offset_seconds",
    "jukinet_unappliable_notifications",
    "jukinet_unappliable_sequence",
}

FAMILIES: dict[str, set[str]] = {
    "municipal": COMMON
    | DELIVERY
    | {"jukinet_notifications_written", "jukinet_code_pool_available", "jukinet_storage_full"}
    | {"jukinet_relayed_requests"},
    "prefecture": COMMON
    | DELIVERY
    | RECEIVER
    | {"jukinet_codes_issued", "jukinet_storage_full", "jukinet_relayed_requests"},
    "national": COMMON
    | RECEIVER
    | {"jukinet_codes_issued", "jukinet_provisions", "jukinet_storage_full"}
    | {"jukinet_relayed_requests"},
    "gateway": COMMON
    | {"jukinet_provisions", "jukinet_gateway_denials", "jukinet_gateway_operation_seconds"},
}
"""The metric families each tier exports (a node that loads a CRL; the
``_total`` suffix of counters left off, as the Prometheus parser names them)."""


def tier_metrics(tier: str) -> NodeMetrics:
    """A tier's metrics with a certificate watch, as a started node has them."""
    metrics: NodeMetrics = {
        "municipal": MunicipalMetrics,
        "prefecture": PrefectureMetrics,
        "national": NationalMetrics,
        "gateway": GatewayMetrics,
    }[tier]()
    return metrics


def documented() -> dict[str, set[str]]:
    """The families per tier in the table of docs/operations.md."""
    out: dict[str, set[str]] = {tier: set() for tier in TIERS}
    rows = re.findall(r"^\| `(jukinet_\w+)` \|(.*)$", DOC.read_text(encoding="utf-8"), re.M)
    assert rows
    for name, rest in rows:
        cells = [c.strip() for c in rest.split("|")]
        # type, labels, then one column per tier in the order of TIERS.
        marks = cells[2 : 2 + len(TIERS)]
        for tier, mark in zip(TIERS, marks, strict=True):
            if mark == "✓":
                out[tier].add(name)
    return out


def test_the_operations_page_lists_what_each_tier_exports() -> None:
    assert documented() == FAMILIES


@pytest.mark.parametrize("tier", TIERS)
def test_each_tier_holds_only_its_own_families(tier: str, pki_dir: Path) -> None:
    metrics = tier_metrics(tier)
    assert metrics.tier == tier
    metrics.watch_certificates(
        node_cert=(pki_dir / "national.pem").read_bytes(),
        ca_cert=(pki_dir / "ca.pem").read_bytes(),
        crl_next_update=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
    )
    names = {family.name for family in metrics.registry.collect()}
    assert names == FAMILIES[tier]


def test_no_family_is_defined_by_two_tiers_apart() -> None:
    """A family two tiers share has one definition: the same help text everywhere."""
    helps: dict[str, set[str]] = {}
    for tier in TIERS:
        for family in tier_metrics(tier).registry.collect():
            helps.setdefault(family.name, set()).add(family.documentation)
    assert {name: h for name, h in helps.items() if len(h) > 1} == {}


def test_delivery_gauges_read_the_outbox_and_the_stream_at_scrape_time() -> None:
    metrics = MunicipalMetrics()
    up = metrics.delivery.upstream("jukinet://prefecture/31")
    labels = {"upstream": "jukinet://prefecture/31"}

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name, labels)

    assert sample("jukinet_upstream_connected") == 0
    connected = [True]
    up.connected_by(lambda: connected[0])
    assert sample("jukinet_upstream_connected") == 1
    connected[0] = False
    assert sample("jukinet_upstream_connected") == 0

    written = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=90)
    up.set_outbox(3, written)
    assert sample("jukinet_outbox_backlog") == 3
    age = sample("jukinet_outbox_oldest_unacknowledged_seconds")
    assert age is not None and 90 <= age < 90 + 60
    up.set_outbox(0, None)
    assert sample("jukinet_outbox_backlog") == 0
    assert sample("jukinet_outbox_oldest_unacknowledged_seconds") == 0
    # One upstream, one set of series: asking again gives the same.
    assert metrics.delivery.upstream("jukinet://prefecture/31") is up
