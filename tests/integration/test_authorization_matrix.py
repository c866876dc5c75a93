"""The negative authorization matrix, generated from the nodes' rule tables.

Every RPC of every node, called by every identity class its rule refuses:
PERMISSION_DENIED ``wrong-identity``, and no database of the federation
changed. Every RPC, called with a revoked certificate of a caller its rule
admits, or with a certificate that carries no valid identity:
UNAUTHENTICATED. And the positive side of the same tables, so that the
refusals mean something: every admitted caller gets past the table.

Real nodes (one federation per database backend, shared by the module), real
mutual TLS. Calls carry the empty request: the table is checked before the
handler sees the request (``test_the_table_is_checked_before_the_request``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
import pytest_asyncio
import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from google.protobuf.message import Message

from jukinet import pki
from jukinet.client import tls_files
from jukinet.db import Database
from jukinet.interceptors import method_path
from jukinet.tls import TlsFiles
from jukinet.v1 import common_pb2, delivery_pb2, municipal_pb2
from tests.authz import (
    AGENCY,
    CALLERS,
    CHIYODA,
    NODES,
    OTHER_PREFECTURE,
    PREFECTURE,
    TOTTORI,
    YONAGO,
    Caller,
    Node,
    Outcome,
    call_method,
)
from tests.federation import Databases, Federation

# Every async test here runs on the loop of the module's federation.
ON_MODULE_LOOP = pytest.mark.asyncio(loop_scope="module")

# Under pytest-xdist the module's tests stay on one worker: its federation and
# PKI are made once, not on every worker that got a share of the cases.
pytestmark = pytest.mark.xdist_group("authorization-matrix")

SOME_CODE = "12345678903"  # valid check digit


# --- the cases, from the rule tables --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One call: a method of a node, by one caller (a certificate name)."""

    node: Node
    service: ServiceDescriptor
    method: MethodDescriptor
    cert: str
    label: str

    @property
    def id(self) -> str:
        """``national.ProvideRecord-as-municipality``."""
        return f"{self.node.name}.{self.method.name}-as-{self.label}"


def refused() -> Iterator[Case]:
    for node in NODES:
        for service, method in node.methods():
            for caller in CALLERS:
                if not node.admits(service, method, caller):
                    yield Case(node, service, method, caller.cert, caller.label)


def admitted() -> Iterator[tuple[Case, Caller]]:
    for node in NODES:
        for service, method in node.methods():
            for caller in CALLERS:
                if node.admits(service, method, caller):
                    yield Case(node, service, method, caller.cert, caller.label), caller


def revoked_cert(caller: Caller) -> str:
    return f"revoked-{caller.cert}"


def revoked() -> Iterator[Case]:
    """The revoked twin of every caller a method's rule admits."""
    for case, caller in admitted():
        yield dataclasses.replace(case, cert=revoked_cert(caller), label=f"revoked-{caller.label}")


# Certificates of the federation's CA that name no valid identity.
BAD_CERTIFICATES = {
    "certificate-without-identity": [],
    "certificate-with-two-identities": [
        f"jukinet://operator/{TOTTORI}/admin",
        f"jukinet://municipality/{TOTTORI}",
    ],
    "certificate-with-malformed-identity": ["jukinet://municipality/312012"],
}


def unidentified() -> Iterator[Case]:
    for node in NODES:
        for service, method in node.methods():
            for name in BAD_CERTIFICATES:
                yield Case(node, service, method, name, name)


REFUSED = list(refused())
ADMITTED = [case for case, _ in admitted()]
UNAUTHENTICATED = [*revoked(), *unidentified()]


def case_id(case: Case) -> str:
    return case.id


# --- one federation per backend --------------------------------------------------------


def _backends() -> list[str]:
    # As tests/conftest.py: PostgreSQL unless JUKINET_TEST_PG=skip.
    wanted = os.environ.get("JUKINET_TEST_PG", "").lower() != "skip"
    return ["sqlite", "postgres"] if wanted else ["sqlite"]


@pytest.fixture(scope="module", params=_backends())
def matrix_backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("pg_available")
    return str(request.param)


class CrlFederation(Federation):
    """A federation whose nodes read the PKI's CRL."""

    def _tls(self, name: str) -> TlsFiles:
        return dataclasses.replace(tls_files(self.pki_dir, name), crl=self.pki_dir / "crl.pem")


def _issue_unidentified(directory: Path, name: str, uris: list[str]) -> None:
    """A certificate of the CA whose URI SANs are ``uris``, as is (pki.issue would refuse)."""
    ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if uris:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]),
            critical=True,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    (directory / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / f"{name}.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def _issue_pki(directory: Path) -> None:
    pki.issue_federation(
        directory,
        pki.FederationSpec(
            municipalities=[TOTTORI, YONAGO, CHIYODA],
            prefectures=[PREFECTURE, OTHER_PREFECTURE],
            agencies=[AGENCY],
            operators=True,
        ),
    )
    for caller in CALLERS:
        pki.issue(directory, caller.identity, revoked_cert(caller))
        pki.revoke(directory, revoked_cert(caller))
    for name, uris in BAD_CERTIFICATES.items():
        _issue_unidentified(directory, name, uris)


@dataclasses.dataclass
class Matrix:
    """The running federation, a channel per (node, certificate), and its databases."""

    fed: Federation
    channels: dict[tuple[str, str], grpc.aio.Channel] = dataclasses.field(default_factory=dict)
    tables: dict[str, list[str]] = dataclasses.field(default_factory=dict)

    def port(self, node: str) -> int:
        """The port ``node`` listens on."""
        return {
            "municipal": self.fed.municipal_ports[TOTTORI],
            "prefecture": self.fed.prefecture_ports[PREFECTURE],
            "national": self.fed.national_port,
            "gateway": self.fed.gateway_port,
        }[node]

    def channel(self, node: str, cert: str) -> grpc.aio.Channel:
        """An mTLS channel to ``node`` as the certificate ``cert``, opened once."""
        key = (node, cert)
        if key not in self.channels:
            self.channels[key] = self.fed.channel(self.port(node), cert)
        return self.channels[key]

    async def call(
        self, case: Case, request: Message | None = None, writes: list[Any] | None = None
    ) -> Outcome:
        """Call one method of the case as its caller; how the call ended."""
        channel = self.channel(case.node.name, case.cert)
        return await call_method(channel, case.service, case.method, request, writes or ())

    def databases(self) -> dict[str, Database]:
        """Every node's database, by node name."""
        assert self.fed.national is not None
        return {
            "national": self.fed.national.db,
            f"prefecture-{PREFECTURE}": self.fed.prefectures[PREFECTURE].db,
            f"municipality-{TOTTORI}": self.fed.municipalities[TOTTORI].db,
        }

    async def state(self) -> dict[str, dict[str, list[str]]]:
        """Every row of every table of every node: what "nothing was written" compares."""
        nodes = self.databases()
        states = await asyncio.gather(*(self._rows(node, db) for node, db in nodes.items()))
        return dict(zip(nodes, states, strict=True))

    async def _rows(self, node: str, db: Database) -> dict[str, list[str]]:
        async with db.read() as conn:
            if node not in self.tables:
                # The schema does not change while the matrix runs: look once.
                names = await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
                # The operation log records refused operator calls: that is
                # the one write a refusal makes (tests/integration/test_oplog_wiring.py).
                self.tables[node] = sorted(n for n in names if not n.startswith("oplog_"))
            out: dict[str, list[str]] = {}
            for name in self.tables[node]:
                rows = (await conn.execute(sa.text(f'SELECT * FROM "{name}"'))).all()
                out[name] = sorted(repr(tuple(row)) for row in rows)
        return out


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(
    tmp_path_factory: pytest.TempPathFactory, matrix_backend: str
) -> AsyncIterator[Matrix]:
    root = tmp_path_factory.mktemp(f"matrix-{matrix_backend}")
    _issue_pki(root / "pki")
    dbs = Databases(matrix_backend, root)
    fed = CrlFederation(pki_dir=root / "pki", databases=dbs)
    try:
        await fed.start_national()
        await fed.start_prefecture(PREFECTURE)
        # No low watermark: the pool keeper stays idle, so that nothing writes
        # to the databases in the background while the matrix compares them.
        await fed.start_municipality(TOTTORI, pool_low_watermark=0)
        await fed.start_gateway()
        yield Matrix(fed)
    finally:
        await fed.stop()
        await dbs.drop_all()


# --- the matrix --------------------------------------------------------------------------


def test_the_matrix_covers_every_method_of_every_node() -> None:
    """Each RPC is refused to someone, and gets its UNAUTHENTICATED cases."""
    every = {f"{n.name}.{m.name}" for n in NODES for _, m in n.methods()}
    assert {c.id.split("-as-")[0] for c in REFUSED} == every
    assert {c.id.split("-as-")[0] for c in UNAUTHENTICATED} == every
    assert len({c.id for c in [*REFUSED, *ADMITTED, *UNAUTHENTICATED]}) == len(
        [*REFUSED, *ADMITTED, *UNAUTHENTICATED]
    )


@ON_MODULE_LOOP
@pytest.mark.parametrize("case", REFUSED, ids=case_id)
async def test_refused_caller_is_permission_denied(matrix: Matrix, case: Case) -> None:
    before = await matrix.state()
    outcome = await matrix.call(case)
    assert (outcome.code, outcome.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "wrong-identity",
    ), outcome
    assert method_path(case.service, case.method.name) in outcome.details
    assert await matrix.state() == before


@ON_MODULE_LOOP
@pytest.mark.parametrize("case", UNAUTHENTICATED, ids=case_id)
async def test_certificate_without_a_good_identity_is_unauthenticated(
    matrix: Matrix, case: Case
) -> None:
    before = await matrix.state()
    outcome = await matrix.call(case)
    expected = "revoked-certificate" if case.label.startswith("revoked-") else "bad-certificate"
    assert (outcome.code, outcome.reason) == (grpc.StatusCode.UNAUTHENTICATED, expected), outcome
    assert await matrix.state() == before


# Well-formed requests that would each write something if they got through.
WOULD_WRITE: dict[str, Message] = {
    "RegisterBirth": municipal_pb2.RegisterBirthRequest(
        person=municipal_pb2.PersonDetails(
            name="鳥取 太郎",
            name_kana="トットリ タロウ",
            birth_date="1988-05-17",
            sex=common_pb2.SEX_MALE,
            address="鳥取県鳥取市東町1丁目220番地",
        )
    ),
    "AllocateCodePool": delivery_pb2.AllocateCodePoolRequest(
        municipality_code=TOTTORI, count=5, request_id="matrix-probe-0001"
    ),
}
PUSH = delivery_pb2.PushNotificationsRequest(
    entries=[
        delivery_pb2.OutboxEntry(
            outbox_sequence=1,
            notification=common_pb2.Notification(
                origin_code=TOTTORI,
                sequence=1,
                kind=common_pb2.CHANGE_KIND_CREATED,
                reason=common_pb2.CHANGE_REASON_BIRTH,
                effective_date="2025-06-01",
                recorded_at=dt.datetime.now(dt.UTC).isoformat(),
                record=common_pb2.IdentityRecord(
                    resident_code=SOME_CODE,
                    name="鳥取 花子",
                    name_kana="トットリ ハナコ",
                    birth_date="2025-06-01",
                    sex=common_pb2.SEX_FEMALE,
                    address="鳥取県鳥取市東町1丁目220番地",
                    local_government_code=TOTTORI,
                ),
            ),
        )
    ]
)


@ON_MODULE_LOOP
@pytest.mark.parametrize(
    "case",
    [c for c in REFUSED if c.method.name in {*WOULD_WRITE, "PushNotifications"}],
    ids=case_id,
)
async def test_the_table_is_checked_before_the_request(matrix: Matrix, case: Case) -> None:
    """A refused caller's request that would write is refused all the same, unread."""
    before = await matrix.state()
    if case.method.client_streaming:
        outcome = await matrix.call(case, writes=[PUSH])
    else:
        outcome = await matrix.call(case, WOULD_WRITE[case.method.name])
    assert (outcome.code, outcome.reason) == (
        grpc.StatusCode.PERMISSION_DENIED,
        "wrong-identity",
    ), outcome
    assert await matrix.state() == before


# Last: an admitted call may write (a denial recorded, a pool drawn).
@ON_MODULE_LOOP
@pytest.mark.parametrize("case", ADMITTED, ids=case_id)
async def test_admitted_caller_gets_past_the_table(matrix: Matrix, case: Case) -> None:
    outcome = await matrix.call(case)
    assert outcome.code not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.UNIMPLEMENTED)
    assert outcome.reason not in ("wrong-identity", "no-rule"), outcome
