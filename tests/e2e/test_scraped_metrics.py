"""Metrics as Prometheus scrapes them: /metrics over HTTP from node processes.

Each tier serves exactly its own families (the sets written out in
tests/unit/test_metrics.py, which the operations page is checked against);
every label value of every node comes from a closed set; the certificate
gauges lie within the certificates' real validity; and the delivery gauges
tell the truth through an outage of the prefecture (stopped) and of the
national node (frozen with SIGSTOP), and after it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import importlib
import pkgutil
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

import jukinet.v1
from jukinet.identity import Identity
from jukinet.localgov import all_local_governments
from jukinet.metrics import PREFECTURE_CODES, TIERS, UNKNOWN_LABEL, VERSION
from jukinet.purposes import load_registry
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, municipal_pb2, municipal_pb2_grpc
from jukinet.vocabulary import OPERATION_LABELS, RESULT_LABELS
from tests.unit.test_metrics import FAMILIES
from tools.localfed import Databases, LocalFederation

# Node processes start slowly on a loaded machine: a generous bound.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(480)]

MUNICIPALITY = "312011"
PREFECTURE = "prefecture-31"
MUNICIPAL = f"municipality-{MUNICIPALITY}"
NENKIN = "nenkin"
EXISTENCE = "NENKIN-EXISTENCE-CHECK"
TIMEOUT = 15
PREFECTURE_UPSTREAM = {"upstream": Identity.prefecture("31").uri}
NATIONAL_UPSTREAM = {"upstream": Identity.national().uri}


@pytest.fixture
async def local(tmp_path: Path, backend: str) -> AsyncIterator[LocalFederation]:
    """National, one prefecture, one municipality and the gateway, as processes."""
    fed = LocalFederation(
        tmp_path,
        [MUNICIPALITY],
        databases=Databases(backend, tmp_path / "data"),
        agencies=[NENKIN],
        gateway=True,
    )
    await fed.prepare()
    try:
        await fed.start_all()
        yield fed
    finally:
        await fed.close()


Scrape = dict[str, list[Sample]]
"""Samples by family name."""


async def scrape(fed: LocalFederation, name: str) -> Scrape:
    """GET /metrics of node ``name``, parsed as Prometheus parses it."""
    url = f"http://127.0.0.1:{fed.nodes[name].metrics_port}/metrics"

    def get() -> str:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body: bytes = response.read()
            return body.decode("utf-8")

    text = await asyncio.to_thread(get)
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, []).extend(family.samples)
    # The text format declares the creation time of each counter and histogram
    # as a gauge family of its own, "<name>_created": part of "<name>" here.
    for name in [n for n in out if n.endswith("_created") and n[: -len("_created")] in out]:
        out[name[: -len("_created")]].extend(out.pop(name))
    return out


def value(families: Scrape, sample: str, labels: dict[str, str] | None = None) -> float | None:
    """The value of the one sample named ``sample`` with exactly ``labels``."""
    for samples in families.values():
        for s in samples:
            if s.name == sample and s.labels == (labels or {}):
                return float(s.value)
    return None


async def until(
    fed: LocalFederation, name: str, holds: Callable[[Scrape], bool], within: float = 30.0
) -> Scrape:
    """Scrape ``name`` until ``holds`` is true of it (bounded by ``within`` seconds)."""
    deadline = time.monotonic() + within
    while True:
        families = await scrape(fed, name)
        if holds(families):
            return families
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never showed the expected values: {families}")
        await asyncio.sleep(0.2)


async def births(fed: LocalFederation, count: int, first: int = 0) -> list[str]:
    """Register ``count`` births at the municipality; their codes (not waiting for delivery)."""
    channel = fed.channel(MUNICIPAL)
    try:
        stub = municipal_pb2_grpc.MunicipalServiceStub(channel)
        codes = []
        for i in range(first, first + count):
            born = await stub.RegisterBirth(
                municipal_pb2.RegisterBirthRequest(
                    person=municipal_pb2.PersonDetails(
                        name=f"智頭　{'一二三四五六七八九十'[i % 10]}{'子美代'[i // 10]}",
                        name_kana="チズ",
                        birth_date=f"19{50 + i}-04-04",
                        sex=common_pb2.SEX_FEMALE,
                        address="鳥取県鳥取市東町1丁目220番地",
                    )
                ),
                timeout=TIMEOUT,
            )
            codes.append(born.resident.resident_code)
        return codes
    finally:
        await channel.close(grace=None)


def served_methods() -> set[str]:
    """Every method a node can serve: the federation's services, health, reflection."""
    for module in pkgutil.iter_modules(jukinet.v1.__path__):
        if module.name.endswith("_pb2"):
            importlib.import_module(f"jukinet.v1.{module.name}")
    files = [
        importlib.import_module(f"jukinet.v1.{m.name}").DESCRIPTOR
        for m in pkgutil.iter_modules(jukinet.v1.__path__)
        if m.name.endswith("_pb2")
    ]
    files += [health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR]
    return {
        f"/{service.full_name}/{method.name}"
        for file in files
        for service in file.services_by_name.values()
        for method in service.methods
    }


def closed_sets() -> dict[str, set[str]]:
    """The values each label name may take, on any node."""
    registry = load_registry()
    return {
        "method": served_methods(),
        "code": {c.name for c in grpc.StatusCode},
        "reason": {r.value for r in Reason},
        "agency": set(registry.agency_codes) | {UNKNOWN_LABEL},
        "purpose": {p.code for p in registry} | {UNKNOWN_LABEL},
        "operation": set(OPERATION_LABELS.values()) | {UNKNOWN_LABEL},
        "result": set(RESULT_LABELS.values()) | {UNKNOWN_LABEL},
        "outcome": {"applied", "duplicate", "refused", "quarantined"},
        "upstream": {PREFECTURE_UPSTREAM["upstream"], NATIONAL_UPSTREAM["upstream"]},
        "tier": set(TIERS),
        "version": {VERSION},
        "certificate": {"node", "ca"},
        # Senders of a tier: local governments (a prefecture's), prefectures (national's).
        "peer": {g.code for g in all_local_governments()} | set(PREFECTURE_CODES),
        "origin": {g.code for g in all_local_governments()},
    }


def not_after(path: Path) -> dt.datetime:
    """When the certificate in ``path`` expires."""
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


async def test_each_tier_serves_its_own_families_with_closed_labels(
    local: LocalFederation,
) -> None:
    # Traffic that fills the labelled families, refusals with invented values included.
    (code,) = await births(local, 1)
    channel = local.channel(MUNICIPAL)
    try:
        stub = municipal_pb2_grpc.MunicipalServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.RegisterBirth(
                municipal_pb2.RegisterBirthRequest(person=municipal_pb2.PersonDetails(name="")),
                timeout=TIMEOUT,
            )
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close(grace=None)
    await local.wait_delivered()
    agency = local.channel("gateway", f"agency-{NENKIN}")
    try:
        nenkin = gateway_pb2_grpc.GatewayServiceStub(agency)
        claim = gateway_pb2.ClaimedIdentity(resident_code=code)
        answer = await nenkin.Verify(
            gateway_pb2.VerifyRequest(purpose_code=EXISTENCE, claim=claim), timeout=TIMEOUT
        )
        assert answer.verification.found
        # A purpose code naming the resident, and one naming no registered purpose.
        for purpose in (f"X-{code}", "INVENTED-PURPOSE"):
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await nenkin.Verify(
                    gateway_pb2.VerifyRequest(purpose_code=purpose, claim=claim),
                    timeout=TIMEOUT,
                )
            assert denied.value.code() in (
                grpc.StatusCode.PERMISSION_DENIED,
                grpc.StatusCode.INVALID_ARGUMENT,
            )
    finally:
        await agency.close(grace=None)

    allowed = closed_sets()
    pki = local.pki_dir
    crl = x509.load_pem_x509_crl((pki / "crl.pem").read_bytes())
    assert crl.next_update_utc is not None
    for name, node in local.nodes.items():
        before = dt.datetime.now(dt.UTC)
        families = await scrape(local, name)
        after = dt.datetime.now(dt.UTC)
        assert set(families) == FAMILIES[node.tier], name
        assert value(families, "jukinet_build_info", {"tier": node.tier, "version": VERSION}) == 1
        for samples in families.values():
            for sample in samples:
                for label, label_value in sample.labels.items():
                    if label in ("le", "quantile"):
                        float(label_value)  # a bucket bound
                        continue
                    assert label in allowed, (name, sample)
                    assert label_value in allowed[label], (name, sample)
        # Within each certificate's real validity, as of the moment of the scrape.
        for certificate, path in (("node", pki / f"{name}.pem"), ("ca", pki / "ca.pem")):
            seconds = value(
                families, "jukinet_certificate_expiry_seconds", {"certificate": certificate}
            )
            assert seconds is not None, (name, certificate)
            expires = not_after(path)
            assert (expires - after).total_seconds() - 1 <= seconds, (name, certificate)
            assert seconds <= (expires - before).total_seconds() + 1, (name, certificate)
            assert seconds > 0
        next_update = value(families, "jukinet_crl_next_update_seconds")
        assert next_update is not None
        assert (crl.next_update_utc - after).total_seconds() - 1 <= next_update
        assert next_update <= (crl.next_update_utc - before).total_seconds() + 1

    municipal = await scrape(local, MUNICIPAL)
    assert value(municipal, "jukinet_notifications_written_total") == 1
    assert value(municipal, "jukinet_upstream_connected", PREFECTURE_UPSTREAM) == 1
    national = await scrape(local, "national")
    assert value(national, "jukinet_notifications_total", {"outcome": "applied"}) == 1
    gateway = await scrape(local, "gateway")
    assert any(
        s.labels.get("purpose") == UNKNOWN_LABEL
        for s in gateway["jukinet_gateway_denials"]
        if s.name.endswith("_total")
    )


def delivery(families: Scrape, upstream: dict[str, str]) -> tuple[float, float, float]:
    """(backlog, age of the oldest unacknowledged entry, connected) towards ``upstream``."""
    backlog = value(families, "jukinet_outbox_backlog", upstream)
    age = value(families, "jukinet_outbox_oldest_unacknowledged_seconds", upstream)
    connected = value(families, "jukinet_upstream_connected", upstream)
    assert backlog is not None and age is not None and connected is not None
    return backlog, age, connected


async def test_delivery_gauges_tell_the_truth_through_outages(local: LocalFederation) -> None:
    await births(local, 1)
    await local.wait_delivered()
    settled = await until(local, MUNICIPAL, lambda f: delivery(f, PREFECTURE_UPSTREAM) == (0, 0, 1))
    pool = value(settled, "jukinet_code_pool_available")
    assert pool is not None

    # The prefecture stopped: everything written waits, and the gauges say so.
    written = 7
    assert pool >= written  # births take codes from the pool, which needs no prefecture
    local.stop(PREFECTURE)
    await until(local, MUNICIPAL, lambda f: delivery(f, PREFECTURE_UPSTREAM)[2] == 0)
    await births(local, written, first=1)
    outage = await until(
        local,
        MUNICIPAL,
        lambda f: (
            delivery(f, PREFECTURE_UPSTREAM)[0] == written
            and delivery(f, PREFECTURE_UPSTREAM)[1] > 0
        ),
    )
    _backlog, age, connected = delivery(outage, PREFECTURE_UPSTREAM)
    assert connected == 0
    later = await until(local, MUNICIPAL, lambda f: delivery(f, PREFECTURE_UPSTREAM)[1] > age + 0.5)
    assert delivery(later, PREFECTURE_UPSTREAM)[0] == written  # nothing sent, nothing lost

    # Back: everything acknowledged, the stream established again.
    await local.start_nodes([PREFECTURE], within=90)
    await local.wait_delivered()
    await until(local, MUNICIPAL, lambda f: delivery(f, PREFECTURE_UPSTREAM) == (0, 0, 1))
    await until(local, PREFECTURE, lambda f: delivery(f, NATIONAL_UPSTREAM) == (0, 0, 1))

    # The national node frozen: the prefecture's relay backlog grows with what
    # it accepts, although its stream to the frozen node still looks open.
    relayed = 5
    local.pause("national")
    try:
        await births(local, relayed, first=1 + written)
        await until(local, MUNICIPAL, lambda f: delivery(f, PREFECTURE_UPSTREAM)[0] == 0)
        frozen = await until(
            local,
            PREFECTURE,
            lambda f: (
                delivery(f, NATIONAL_UPSTREAM)[0] == relayed
                and delivery(f, NATIONAL_UPSTREAM)[1] > 0
            ),
        )
        assert delivery(frozen, NATIONAL_UPSTREAM)[0] == relayed
    finally:
        local.resume("national")
    await local.wait_delivered()
    await until(local, PREFECTURE, lambda f: delivery(f, NATIONAL_UPSTREAM) == (0, 0, 1))
