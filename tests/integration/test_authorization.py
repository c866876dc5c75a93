"""Authorization beyond the per-method tables, from its negative side: the
handshake, the object-level rules (whose notifications, whose pool) and
revocation; who is turned away, with which status and reason, and that
nothing they sent was applied. Real nodes, real mutual TLS.

The per-method tables themselves are covered by the generated matrix in
``test_authorization_matrix.py``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest

from jukinet import pki
from jukinet.client import tls_files
from jukinet.tls import TlsFiles, secure_channel
from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    municipal_pb2,
    national_pb2_grpc,
    prefecture_pb2_grpc,
)
from services.municipal import access as municipal_access
from services.national import access as national_access
from services.prefecture import access as prefecture_access
from tests.authz import Outcome, call_method
from tests.federation import Databases, Federation, OperatorCards, trailers

TIMEOUT = 15
C = common_pb2
M = municipal_pb2

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
SOME_CODE = "12345678903"  # valid check digit

SERVICES = {
    "municipal": municipal_access.SERVICE,
    "prefecture": prefecture_access.SERVICE,
    "national": national_access.SERVICE,
}


def person() -> M.PersonDetails:
    """A valid person's details."""
    return M.PersonDetails(
        name="鳥取 太郎",
        name_kana="トットリ タロウ",
        birth_date="1988-05-17",
        sex=C.SEX_MALE,
        address="鳥取県鳥取市東町1丁目220番地",
    )


def request_for(method: str) -> Any:
    """A well-formed request: if authorization let it through, it would do something."""
    return {
        "RegisterBirth": M.RegisterBirthRequest(person=person()),
        "GetResident": M.GetResidentRequest(resident_code=SOME_CODE),
        "AllocateCodePool": delivery_pb2.AllocateCodePoolRequest(
            municipality_code=TOTTORI, count=5, request_id="authz-probe-0001"
        ),
        "GetIdentity": delivery_pb2.GetIdentityRequest(resident_code=SOME_CODE),
    }.get(method)


async def invoke(
    channel: grpc.aio.Channel, tier: str, method: str, writes: list[Any] | None = None
) -> Outcome:
    """Call ``method`` and report the final status, whatever its cardinality."""
    service = SERVICES[tier]
    return await call_method(
        channel, service, service.methods_by_name[method], request_for(method), writes or ()
    )


def port_of(fed: Federation, tier: str, code: str = "") -> int:
    """The port of the node of ``tier`` (and ``code``)."""
    if tier == "municipal":
        return fed.municipal_ports[code]
    if tier == "prefecture":
        return fed.prefecture_ports[code]
    return fed.national_port


async def snapshot(fed: Federation) -> tuple[Any, ...]:
    """Everything a refused call could have changed, in every tier."""
    out: list[Any] = []
    for code in sorted(fed.municipalities):
        s = await fed.operator(code).GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
        out.append((code, s.last_sequence, s.active_residents, s.removed_residents))
    for pref in sorted(fed.prefectures):
        d = await fed.prefecture_operator(pref).GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        )
        out.append((pref, d.SerializeToString(deterministic=True)))
    d = await fed.national_operator().GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    out.append(("national", d.SerializeToString(deterministic=True)))
    return tuple(out)


def notification(origin: str, sequence: int, code: str) -> C.Notification:
    """A birth notification of ``origin`` for resident ``code``."""
    return C.Notification(
        origin_code=origin,
        sequence=sequence,
        kind=C.CHANGE_KIND_CREATED,
        reason=C.CHANGE_REASON_BIRTH,
        effective_date="2025-06-01",
        recorded_at=dt.datetime.now(dt.UTC).isoformat(),
        record=C.IdentityRecord(
            resident_code=code,
            name="米子 一子",
            name_kana="ヨナゴ カズコ",
            birth_date="2025-06-01",
            sex=C.SEX_FEMALE,
            address="鳥取県米子市加茂町1丁目1番地",
            local_government_code=origin,
        ),
    )


def push_batch(*notifications: C.Notification) -> delivery_pb2.PushNotificationsRequest:
    """One PushNotifications message carrying ``notifications`` in order."""
    return delivery_pb2.PushNotificationsRequest(
        entries=[
            delivery_pb2.OutboxEntry(outbox_sequence=i + 1, notification=n)
            for i, n in enumerate(notifications)
        ]
    )


# --- authentication: the handshake --------------------------------------------------


TARGETS = [("municipal", TOTTORI), ("prefecture", "31"), ("national", "")]
FIRST_METHOD = {
    "municipal": "GetStatus",
    "prefecture": "GetDeliveryStatus",
    "national": "GetDeliveryStatus",
}


async def test_no_client_certificate_fails_the_handshake(fed: Federation) -> None:
    ca = (fed.pki_dir / "ca.pem").read_bytes()
    only_trust = grpc.ssl_channel_credentials(root_certificates=ca)
    for tier, code in TARGETS:
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port_of(fed, tier, code)}", only_trust
        ) as channel:
            outcome = await invoke(channel, tier, FIRST_METHOD[tier])
        assert outcome.code == grpc.StatusCode.UNAVAILABLE, (tier, outcome)


async def test_certificate_from_another_ca_fails_the_handshake(
    fed: Federation, tmp_path: Path
) -> None:
    foreign = tmp_path / "foreign-pki"
    # Same identities, same file names, another root: an impostor federation.
    pki.issue_federation(
        foreign,
        pki.FederationSpec(municipalities=[TOTTORI], operators=True),
        ca_common_name="impostor CA",
    )
    before = await snapshot(fed)
    for (tier, code), name, method in [
        (("municipal", TOTTORI), f"operator-{TOTTORI}-admin", "RegisterBirth"),
        (("prefecture", "31"), f"municipality-{TOTTORI}", "AllocateCodePool"),
        (("prefecture", "31"), "operator-31-admin", "GetDeliveryStatus"),
        (("national", ""), "prefecture-31", "AllocateCodePool"),
        (("national", ""), "operator-national-admin", "GetDeliveryStatus"),
    ]:
        # Trusts our CA (so the server checks out) but presents the impostor's
        # certificate. Built by hand: TlsFiles refuses a foreign certificate.
        impostor = grpc.ssl_channel_credentials(
            root_certificates=(fed.pki_dir / "ca.pem").read_bytes(),
            private_key=(foreign / f"{name}.key").read_bytes(),
            certificate_chain=(foreign / f"{name}.pem").read_bytes(),
        )
        async with grpc.aio.secure_channel(
            f"127.0.0.1:{port_of(fed, tier, code)}", impostor
        ) as channel:
            outcome = await invoke(channel, tier, method)
        assert outcome.code == grpc.StatusCode.UNAVAILABLE, (tier, name, method, outcome)
    assert await snapshot(fed) == before


# --- authorization: what the per-method tables cannot see ---------------------------
# The tables themselves: the generated matrix in test_authorization_matrix.py.


async def test_municipality_of_another_prefecture_cannot_push(fed: Federation) -> None:
    before = await snapshot(fed)
    channel = fed.channel(fed.prefecture_ports["31"], f"municipality-{CHIYODA}")
    for origin in (CHIYODA, TOTTORI):
        outcome = await invoke(
            channel,
            "prefecture",
            "PushNotifications",
            [push_batch(notification(origin, 1, SOME_CODE))],
        )
        assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, outcome
        assert outcome.meta["jukinet-reason"] == "wrong-identity"
        assert f"jukinet://municipality/{CHIYODA}" in outcome.details
    assert await snapshot(fed) == before


@pytest.fixture
async def yonago_stopped(fed: Federation) -> AsyncIterator[None]:
    """Stop 312029's node so nothing of its own reaches the prefecture meanwhile."""
    await fed.municipalities.pop(YONAGO).stop()
    fed.municipal_ports.pop(YONAGO)
    yield


async def test_municipality_cannot_send_another_municipalitys_notifications(
    fed: Federation, yonago_stopped: None
) -> None:
    # A code that really is in 312029's pool, so only the origin is wrong.
    yonago = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{YONAGO}")
    )
    code = (
        await yonago.AllocateCodePool(
            delivery_pb2.AllocateCodePoolRequest(
                municipality_code=YONAGO, count=1, request_id="authz-foreign-origin"
            ),
            timeout=TIMEOUT,
        )
    ).resident_codes[0]
    before = await snapshot(fed)
    channel = fed.channel(fed.prefecture_ports["31"], f"municipality-{TOTTORI}")
    outcome = await invoke(
        channel, "prefecture", "PushNotifications", [push_batch(notification(YONAGO, 1, code))]
    )
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, outcome
    assert outcome.meta["jukinet-reason"] == "foreign-origin"
    # Hidden behind an entry of its own: the whole batch is refused.
    own = notification(TOTTORI, 1, SOME_CODE)
    outcome = await invoke(
        channel,
        "prefecture",
        "PushNotifications",
        [push_batch(own, notification(YONAGO, 1, code))],
    )
    assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, outcome
    assert outcome.meta["jukinet-reason"] == "foreign-origin"
    assert await snapshot(fed) == before
    # 312029 itself may send it.
    outcome = await invoke(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{YONAGO}"),
        "prefecture",
        "PushNotifications",
        [push_batch(notification(YONAGO, 1, code))],
    )
    assert outcome.code == grpc.StatusCode.OK, outcome


async def test_prefecture_cannot_relay_another_prefectures_notifications(
    fed: Federation,
) -> None:
    before = await snapshot(fed)
    for name, origin in (("prefecture-31", CHIYODA), ("prefecture-13", TOTTORI)):
        outcome = await invoke(
            fed.channel(fed.national_port, name),
            "national",
            "PushNotifications",
            [push_batch(notification(origin, 1, SOME_CODE))],
        )
        assert outcome.code == grpc.StatusCode.PERMISSION_DENIED, (name, outcome)
        assert outcome.meta["jukinet-reason"] == "foreign-origin"
    assert await snapshot(fed) == before


async def test_pool_only_for_ones_own(fed: Federation) -> None:
    # A prefecture asks the national node for a municipality of another prefecture.
    national_as_31 = national_pb2_grpc.NationalServiceStub(
        fed.channel(fed.national_port, "prefecture-31")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await national_as_31.AllocateCodePool(
            delivery_pb2.AllocateCodePoolRequest(
                municipality_code=CHIYODA, count=5, request_id="authz-pool-other-pref"
            ),
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert trailers(info.value)["jukinet-reason"] == "foreign-origin"

    # A municipality asks its prefecture for another municipality's pool.
    for asker, other in ((TOTTORI, YONAGO), (YONAGO, TOTTORI)):
        prefecture_as_m = prefecture_pb2_grpc.PrefectureServiceStub(
            fed.channel(fed.prefecture_ports["31"], f"municipality-{asker}")
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await prefecture_as_m.AllocateCodePool(
                delivery_pb2.AllocateCodePoolRequest(
                    municipality_code=other, count=5, request_id=f"authz-pool-{asker}"
                ),
                timeout=TIMEOUT,
            )
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert trailers(info.value)["jukinet-reason"] == "foreign-origin"
    own = await national_as_31.AllocateCodePool(
        delivery_pb2.AllocateCodePoolRequest(
            municipality_code=YONAGO, count=5, request_id="authz-pool-yonago-own"
        ),
        timeout=TIMEOUT,
    )
    as_tottori = prefecture_pb2_grpc.PrefectureServiceStub(
        fed.channel(fed.prefecture_ports["31"], f"municipality-{TOTTORI}")
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await as_tottori.AllocateCodePool(
            delivery_pb2.AllocateCodePoolRequest(
                municipality_code=TOTTORI, count=5, request_id="authz-pool-yonago-own"
            ),
            timeout=TIMEOUT,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Refused by the national node and relayed by the prefecture with its status.
    assert "request_id" in (info.value.details() or "")
    assert len(own.resident_codes) == 5


# --- revoked certificates -------------------------------------------------------------


class CrlFederation(Federation):
    """A federation whose nodes read the PKI's CRL."""

    def _tls(self, name: str) -> TlsFiles:
        return dataclasses.replace(tls_files(self.pki_dir, name), crl=self.pki_dir / "crl.pem")


@pytest.fixture
async def revoking_fed(
    tmp_path: Path, backend: str, pki_dir: Path, operator_cards: OperatorCards
) -> AsyncIterator[CrlFederation]:
    """National, prefecture 31 and Tottori on a private PKI whose CRL revokes
    Tottori's administrator certificate, its counter terminal desk2 and Yonago."""
    # A private copy of the session PKI, so revocations stay in this test.
    private = tmp_path / "pki"
    shutil.copytree(pki_dir, private)
    pki.revoke(private, f"operator-{TOTTORI}-admin")
    pki.revoke(private, f"terminal-{TOTTORI}-desk2")
    pki.revoke(private, f"municipality-{YONAGO}")
    dbs = Databases(backend, tmp_path)
    fed = CrlFederation(pki_dir=private, databases=dbs, cards=operator_cards)
    try:
        await fed.start_national()
        await fed.start_prefecture("31")
        await fed.start_municipality(TOTTORI)
        yield fed
    finally:
        await fed.stop()
        await dbs.drop_all()


async def test_revoked_certificates_are_unauthenticated(revoking_fed: CrlFederation) -> None:
    fed = revoking_fed
    port = fed.municipal_ports[TOTTORI]
    revoked_desk = fed.channel(port, f"terminal-{TOTTORI}-desk2", session=fed.sessions[TOTTORI])
    for channel in (fed.channel(port, f"operator-{TOTTORI}-admin"), revoked_desk):
        for method in ("GetStatus", "RegisterBirth", "ExportResidents"):
            outcome = await invoke(channel, "municipal", method)
            assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, (method, outcome)
            assert outcome.meta["jukinet-reason"] == "revoked-certificate"
    # The counter operator at a terminal not revoked is let in.
    clerk = fed.operator(TOTTORI)
    born = await clerk.RegisterBirth(M.RegisterBirthRequest(person=person()), timeout=TIMEOUT)
    assert born.notification_sequence == 1
    status = await clerk.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    assert (status.last_sequence, status.active_residents) == (1, 1)

    # A revoked municipality certificate cannot push or ask for codes.
    revoked_node = secure_channel(
        f"127.0.0.1:{fed.prefecture_ports['31']}", tls_files(fed.pki_dir, f"municipality-{YONAGO}")
    )
    fed.channels.append(revoked_node)
    for method, writes in (
        ("PushNotifications", [push_batch(notification(YONAGO, 1, SOME_CODE))]),
        ("AllocateCodePool", None),
    ):
        outcome = await invoke(revoked_node, "prefecture", method, writes)
        assert outcome.code == grpc.StatusCode.UNAUTHENTICATED, (method, outcome)
        assert outcome.meta["jukinet-reason"] == "revoked-certificate"
