"""The upper tiers check the move-out certificate a domestic move-in carries, over
real mutual TLS: notifications are pushed with a municipal node's own key, with
certificates signed by the test federation's node keys.

A move-in that is refused leaves every tier as it was (records, histories,
delivery cursors, outboxes). A forgery that only the national node can see
(the issuer is in another prefecture) is acknowledged there but never applied:
the national record stays the true one, for agencies too.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jukinet import movecert
from jukinet.v1 import (
    common_pb2,
    delivery_pb2,
    gateway_pb2,
    municipal_pb2,
    national_pb2_grpc,
    prefecture_pb2_grpc,
)
from jukinet.vocabulary import Person, person_values
from tests.federation import Federation
from tests.integration.test_bad_input import batch, cursor, push
from tests.integration.test_holding import ADDRESSES, person, upper_tiers

TIMEOUT = 15
C = common_pb2
M = municipal_pb2
G = gateway_pb2

TOTTORI = "312011"
YONAGO = "312029"
CHIYODA = "131016"
MOVED = "2025-05-01"
EXISTENCE = "NENKIN-EXISTENCE-CHECK"

FORGED = M.PersonDetails(
    name="偽物 太郎",
    name_kana="ニセモノ タロウ",
    birth_date="1970-07-07",
    sex=C.SEX_MALE,
    address=ADDRESSES[TOTTORI],
)


def node_key(fed: Federation, code: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Municipality ``code``'s node certificate and key from the test PKI."""
    name = f"municipality-{code}"
    cert = x509.load_pem_x509_certificate((fed.pki_dir / f"{name}.pem").read_bytes())
    key = serialization.load_pem_private_key((fed.pki_dir / f"{name}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return cert, key


def certificate(
    fed: Federation,
    *,
    issuer: str,
    code: str,
    sequence: int,
    who: M.PersonDetails | None = None,
    signer: str = "",
    destination: str = "",
    number: str | None = None,
) -> C.SignedMoveOutCertificate:
    """A move-out certificate of ``issuer``, signed with ``signer``'s node key."""
    cert, key = node_key(fed, signer or issuer)
    body = movecert.build(
        issuer=issuer,
        resident_code=code,
        person=Person(**person_values(who or person(issuer))),
        planned_date=MOVED,
        destination=destination,
        move_out_sequence=sequence,
        issued_at=dt.datetime.now(dt.UTC),
        number=number,
    )
    return movecert.sign(body, key, cert)


def move_in(
    origin: str,
    sequence: int,
    code: str,
    signed: C.SignedMoveOutCertificate | None,
    who: M.PersonDetails | None = None,
) -> C.Notification:
    """A domestic move-in at ``origin`` carrying ``signed`` (none if None)."""
    details = who or person(origin)
    n = C.Notification(
        origin_code=origin,
        sequence=sequence,
        kind=C.CHANGE_KIND_CREATED,
        reason=C.CHANGE_REASON_MOVE_IN,
        effective_date=MOVED,
        recorded_at=dt.datetime.now(dt.UTC).isoformat(),
        record=C.IdentityRecord(
            resident_code=code, **person_values(details), local_government_code=origin
        ),
    )
    n.record.address = ADDRESSES[origin]
    if signed is not None:
        n.move_out_certificate.CopyFrom(signed)
    return n


def speak_as(fed: Federation, code: str) -> prefecture_pb2_grpc.PrefectureServiceAsyncStub:
    """The prefecture as municipality ``code`` speaks to it; its node must be stopped."""
    assert code not in fed.municipalities
    channel = fed.channel(fed.prefecture_ports[code[:2]], f"municipality-{code}")
    return prefecture_pb2_grpc.PrefectureServiceStub(channel)


async def stop_node(fed: Federation, code: str) -> None:
    """Stop municipality ``code``'s node: the test sends its notifications itself."""
    await fed.municipalities.pop(code).stop()
    fed.municipal_ports.pop(code)


def national_as(fed: Federation, prefecture: str) -> national_pb2_grpc.NationalServiceAsyncStub:
    """The national node as prefecture ``prefecture`` speaks to it."""
    return national_pb2_grpc.NationalServiceStub(
        fed.channel(fed.national_port, f"prefecture-{prefecture}")
    )


async def born(fed: Federation, municipality: str, who: M.PersonDetails | None = None) -> str:
    """A resident born at ``municipality`` and delivered to every tier."""
    r = await fed.operator(municipality).RegisterBirth(
        M.RegisterBirthRequest(person=who or person(municipality)), timeout=TIMEOUT
    )
    await fed.wait_delivered()
    return r.resident.resident_code


async def moved_out(fed: Federation, municipality: str, code: str, destination: str) -> int:
    """Move ``code`` out of ``municipality``; the sequence of its move-out notification."""
    stub = fed.operator(municipality)
    await stub.MoveOut(
        M.MoveOutRequest(
            resident_code=code,
            destination_local_government_code=destination,
            effective_date=MOVED,
        ),
        timeout=TIMEOUT,
    )
    status = await stub.GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    return int(status.last_sequence)


async def last_sequence(fed: Federation, municipality: str) -> int:
    """How far ``municipality``'s stream has come at the national node."""
    status = await fed.national_operator().GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    return cursor(status, municipality)


async def until_national_cursor(fed: Federation, origin: str, sequence: int) -> None:
    """Wait until the national node has applied ``origin`` up to ``sequence``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while await last_sequence(fed, origin) < sequence:
        assert loop.time() < deadline, f"{origin} #{sequence} never reached the national node"
        await asyncio.sleep(0.05)


async def record(stub: Any, code: str) -> delivery_pb2.GetIdentityResponse:
    """An upper tier's record of ``code``, with its history."""
    r: delivery_pb2.GetIdentityResponse = await stub.GetIdentity(
        delivery_pb2.GetIdentityRequest(resident_code=code), timeout=TIMEOUT
    )
    return r


async def until_at(stub: Any, code: str, municipality: str) -> None:
    """Wait until an upper tier's record of ``code`` is active at ``municipality``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        try:
            r = await record(stub, code)
            if (r.identity.record.local_government_code, r.identity.status) == (
                municipality,
                C.RECORD_STATUS_ACTIVE,
            ):
                return
        except grpc.aio.AioRpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND
        assert loop.time() < deadline, f"{code} never became active at {municipality}"
        await asyncio.sleep(0.05)


def kept_refused(fed: Federation) -> float:
    """How many notifications the national node has kept as refused."""
    assert fed.national is not None
    value = fed.national.metrics.registry.get_sample_value(
        "jukinet_notifications_total", {"outcome": "quarantined"}
    )
    return value or 0.0


async def refused_everywhere(
    fed: Federation,
    n: C.Notification,
    status: grpc.StatusCode,
    reason: str,
    codes: list[str],
    *,
    national: bool = True,
) -> None:
    """``n`` is refused with ``status`` and ``reason`` by its prefecture and (with
    ``national``), sent straight by that prefecture's key, by the national node;
    nothing changes at any tier."""
    before = await upper_tiers(fed, codes)
    prefecture = n.origin_code[:2]
    stubs: list[Any] = [speak_as(fed, n.origin_code)]
    if national:
        stubs.append(national_as(fed, prefecture))
    for stub in stubs:
        code, meta, acks = await push(stub, batch((1, n)))
        assert (code, meta.get("jukinet-reason")) == (status, reason), (stub, meta)
        assert acks == []
    assert await upper_tiers(fed, codes) == before


# --- self-contained checks: refused at the first hop and at the national node ----------


async def test_a_move_in_without_a_valid_certificate_is_refused(fed: Federation) -> None:
    code = await born(fed, TOTTORI)
    other = await born(fed, TOTTORI, person(TOTTORI, name="鳥取 次郎"))
    sequence = await moved_out(fed, TOTTORI, code, YONAGO)
    await fed.wait_delivered()
    await stop_node(fed, YONAGO)
    good = certificate(fed, issuer=TOTTORI, code=code, sequence=sequence)
    tampered = C.SignedMoveOutCertificate()
    tampered.CopyFrom(good)
    tampered.signature = good.signature[:-2] + bytes([good.signature[-2] ^ 1, good.signature[-1]])
    altered = C.SignedMoveOutCertificate()
    altered.CopyFrom(good)
    body = C.MoveOutCertificate.FromString(good.certificate)
    body.name = FORGED.name
    altered.certificate = body.SerializeToString()
    unknown = person(YONAGO, name="米子 花子")
    cases: list[tuple[str, C.Notification, grpc.StatusCode, str]] = [
        (
            "missing",
            move_in(YONAGO, 1, code, None, person(TOTTORI)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "move-out-certificate-missing",
        ),
        (
            "forged signature",
            move_in(YONAGO, 1, code, tampered, person(TOTTORI)),
            grpc.StatusCode.PERMISSION_DENIED,
            "move-out-certificate-invalid",
        ),
        (
            "altered after signing",
            move_in(YONAGO, 1, code, altered, person(TOTTORI)),
            grpc.StatusCode.PERMISSION_DENIED,
            "move-out-certificate-invalid",
        ),
        (
            "signed by another municipality's key",
            move_in(
                YONAGO,
                1,
                code,
                certificate(fed, issuer=TOTTORI, code=code, sequence=sequence, signer=CHIYODA),
                person(TOTTORI),
            ),
            grpc.StatusCode.PERMISSION_DENIED,
            "move-out-certificate-foreign",
        ),
        (
            "for another code",
            move_in(YONAGO, 1, other, good, person(TOTTORI)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "move-out-certificate-mismatch",
        ),
        (
            "identity items differ",
            move_in(YONAGO, 1, code, good, unknown),
            grpc.StatusCode.FAILED_PRECONDITION,
            "move-out-certificate-mismatch",
        ),
        (
            "to another destination",
            move_in(
                YONAGO,
                1,
                code,
                certificate(fed, issuer=TOTTORI, code=code, sequence=sequence, destination=CHIYODA),
                person(TOTTORI),
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "move-out-certificate-mismatch",
        ),
        (
            "issued by the moving-in municipality",
            move_in(
                YONAGO,
                1,
                code,
                certificate(fed, issuer=YONAGO, code=code, sequence=1, who=person(TOTTORI)),
                person(TOTTORI),
            ),
            grpc.StatusCode.FAILED_PRECONDITION,
            "move-out-certificate-mismatch",
        ),
    ]
    for label, n, status, reason in cases:
        try:
            await refused_everywhere(fed, n, status, reason, [code, other])
        except AssertionError as exc:  # pragma: no cover - names the failing case
            raise AssertionError(f"{label}: {exc}") from exc
    # A certificate on anything but a domestic move-in is refused as bad input.
    birth = move_in(YONAGO, 1, code, good, person(TOTTORI))
    birth.reason = C.CHANGE_REASON_MOVE_IN_FROM_ABROAD
    await refused_everywhere(
        fed, birth, grpc.StatusCode.INVALID_ARGUMENT, "invalid-argument", [code]
    )
    # The same move-in with the good certificate is accepted, and reaches the national node.
    code_, _, acks = await push(
        speak_as(fed, YONAGO), batch((1, move_in(YONAGO, 1, code, good, person(TOTTORI))))
    )
    assert code_ == grpc.StatusCode.OK
    assert [a.applied for a in acks] == [1]
    await until_at(fed.national_operator(), code, YONAGO)


# --- replay: a certificate is used once at every tier ---------------------------------


async def test_a_certificate_is_used_once(fed: Federation) -> None:
    code = await born(fed, TOTTORI)
    sequence = await moved_out(fed, TOTTORI, code, YONAGO)
    await fed.wait_delivered()
    await stop_node(fed, YONAGO)
    await stop_node(fed, CHIYODA)
    good = certificate(fed, issuer=TOTTORI, code=code, sequence=sequence)
    first = move_in(YONAGO, 1, code, good, person(TOTTORI))
    status, _, acks = await push(speak_as(fed, YONAGO), batch((1, first)))
    assert status == grpc.StatusCode.OK
    await until_national_cursor(fed, YONAGO, 1)
    # Its redelivery is a duplicate, not a replay.
    status, _, acks = await push(speak_as(fed, YONAGO), batch((1, first)))
    assert status == grpc.StatusCode.OK
    assert [(a.applied, a.duplicates) for a in acks] == [(0, 1)]
    # Another move-in with the same certificate, or another certificate for the
    # same move-out, is refused at the prefecture.
    again = move_in(YONAGO, 2, code, good, person(TOTTORI))
    renumbered = move_in(
        YONAGO,
        2,
        code,
        certificate(
            fed, issuer=TOTTORI, code=code, sequence=sequence, number=f"{TOTTORI}-0123456789abcdef"
        ),
        person(TOTTORI),
    )
    for n in (again, renumbered):
        await refused_everywhere(
            fed,
            n,
            grpc.StatusCode.FAILED_PRECONDITION,
            "move-out-certificate-replayed",
            [code],
            national=False,
        )
    # Used in another prefecture, which cannot know: the national node keeps it
    # as refused and its record stays at the first municipality.
    national_before = await record(fed.national_operator(), code)
    before_count = kept_refused(fed)
    elsewhere = move_in(CHIYODA, 1, code, good, person(TOTTORI))
    status, _, acks = await push(speak_as(fed, CHIYODA), batch((1, elsewhere)))
    assert status == grpc.StatusCode.OK
    await until_national_cursor(fed, CHIYODA, 1)
    assert await record(fed.national_operator(), code) == national_before
    assert kept_refused(fed) == before_count + 1


# --- the holding: the issuer must hold the resident -------------------------------------


async def test_a_move_in_ahead_of_the_issuers_registration_is_let_through_the_prefecture(
    fed: Federation,
) -> None:
    # Born and moved out at 312011 while its prefecture is down; 312011's node
    # then stops with both in its outbox.
    await fed.prefectures["31"].stop()
    r = await fed.operator(TOTTORI).RegisterBirth(
        M.RegisterBirthRequest(person=person(TOTTORI)), timeout=TIMEOUT
    )
    code = r.resident.resident_code
    sequence = await moved_out(fed, TOTTORI, code, YONAGO)
    await stop_node(fed, TOTTORI)
    await fed.start_prefecture("31")
    await stop_node(fed, YONAGO)
    early = move_in(
        YONAGO,
        1,
        code,
        certificate(fed, issuer=TOTTORI, code=code, sequence=sequence),
        person(TOTTORI),
    )
    # The prefecture does not hold 312029's stream up for 312011's: it takes the
    # move-in, and the national node keeps it pending until 312011's arrive.
    got, meta, acks = await push(speak_as(fed, YONAGO), batch((1, early)))
    assert got == grpc.StatusCode.OK, meta
    assert [a.applied for a in acks] == [1]
    await fed.start_municipality(TOTTORI)
    await fed.wait_delivered()
    for stub in (fed.prefecture_operator("31"), fed.national_operator()):
        await until_at(stub, code, YONAGO)


async def test_a_takeover_by_another_prefectures_key_is_kept_refused_at_the_national_node(
    fed: Federation,
) -> None:
    victim = await born(fed, TOTTORI)
    await born(fed, CHIYODA)  # 131016's stream has come as far as its #1 everywhere
    before = await record(fed.national_operator(), victim)
    before_count = kept_refused(fed)
    # 131016 signs, with its own key, a move-out of a Tottori resident it never
    # held; someone presents it at 312029. Prefecture 31 cannot know 131016's
    # residents (its move-out may be on its way), so the national node judges.
    await stop_node(fed, YONAGO)
    forged = certificate(fed, issuer=CHIYODA, code=victim, sequence=1, who=FORGED)
    status, meta, acks = await push(
        speak_as(fed, YONAGO), batch((1, move_in(YONAGO, 1, victim, forged, FORGED)))
    )
    assert status == grpc.StatusCode.OK, meta
    assert [a.applied for a in acks] == [1]
    await until_national_cursor(fed, YONAGO, 1)
    assert await record(fed.national_operator(), victim) == before
    assert kept_refused(fed) == before_count + 1


async def test_a_forged_certificate_of_a_municipality_of_the_prefecture_is_refused(
    fed: Federation,
) -> None:
    # 312011 has delivered its notifications, none of which registered this code.
    await born(fed, TOTTORI)
    victim = await born(fed, CHIYODA)
    await stop_node(fed, YONAGO)
    forged = certificate(fed, issuer=TOTTORI, code=victim, sequence=1, who=FORGED)
    await refused_everywhere(
        fed,
        move_in(YONAGO, 1, victim, forged, FORGED),
        grpc.StatusCode.PERMISSION_DENIED,
        "move-out-certificate-not-held",
        [victim],
        national=False,
    )


async def test_a_takeover_across_prefectures_is_kept_refused_at_the_national_node(
    fed: Federation,
) -> None:
    victim = await born(fed, TOTTORI)
    await born(fed, YONAGO)  # 312029's stream has come as far as its #1 everywhere
    await fed.start_gateway()
    before = await record(fed.national_operator(), victim)
    # 312029 signs, with its own key, a move-out of a resident it never held; it is
    # presented at 131016, whose prefecture cannot know 312029's residents.
    await stop_node(fed, CHIYODA)
    forged = certificate(fed, issuer=YONAGO, code=victim, sequence=1, who=FORGED)
    before_count = kept_refused(fed)
    status, _, acks = await push(
        speak_as(fed, CHIYODA), batch((1, move_in(CHIYODA, 1, victim, forged, FORGED)))
    )
    assert status == grpc.StatusCode.OK
    assert [a.applied for a in acks] == [1]
    await until_national_cursor(fed, CHIYODA, 1)
    # Its later changes of that resident follow it; the relay goes on behind them.
    death = move_in(CHIYODA, 2, victim, None, FORGED)
    death.kind, death.reason = C.CHANGE_KIND_REMOVED, C.CHANGE_REASON_DEATH
    status, _, _ = await push(speak_as(fed, CHIYODA), batch((2, death)))
    assert status == grpc.StatusCode.OK
    await until_national_cursor(fed, CHIYODA, 2)
    assert await record(fed.national_operator(), victim) == before
    assert kept_refused(fed) == before_count + 2
    # Agencies get the true record.
    got = await fed.agency("nenkin").Verify(
        G.VerifyRequest(
            purpose_code=EXISTENCE,
            claim=G.ClaimedIdentity(
                resident_code=victim,
                name=person(TOTTORI).name,
                birth_date=person(TOTTORI).birth_date,
                sex=person(TOTTORI).sex,
            ),
        ),
        timeout=TIMEOUT,
    )
    v = got.verification
    assert (v.found, v.currently_registered, v.name) == (True, True, G.ITEM_MATCH_MATCH)
    # 312011's own changes of its resident still apply.
    await fed.operator(TOTTORI).RecordDeath(
        M.RecordDeathRequest(resident_code=victim, date_of_death="2025-06-01"), timeout=TIMEOUT
    )
    await fed.wait_delivered()
    final = await record(fed.national_operator(), victim)
    assert (final.identity.record.local_government_code, final.identity.status) == (
        TOTTORI,
        C.RECORD_STATUS_REMOVED,
    )
    assert all(h.notification.origin_code == TOTTORI for h in final.history)


# --- a real move: accepted within and across prefectures, in either order -----------------


async def test_a_move_within_a_prefecture(fed: Federation) -> None:
    code = await born(fed, TOTTORI)
    sequence = await moved_out(fed, TOTTORI, code, YONAGO)
    await fed.wait_delivered()
    await stop_node(fed, YONAGO)
    n = move_in(
        YONAGO,
        1,
        code,
        certificate(fed, issuer=TOTTORI, code=code, sequence=sequence, destination=YONAGO),
        person(TOTTORI),
    )
    status, _, acks = await push(speak_as(fed, YONAGO), batch((1, n)))
    assert status == grpc.StatusCode.OK
    assert [a.applied for a in acks] == [1]
    for stub in (fed.prefecture_operator("31"), fed.national_operator()):
        await until_at(stub, code, YONAGO)


async def test_a_move_across_prefectures_after_the_move_out(fed: Federation) -> None:
    code = await born(fed, TOTTORI)
    sequence = await moved_out(fed, TOTTORI, code, CHIYODA)
    await fed.wait_delivered()
    await stop_node(fed, CHIYODA)
    n = move_in(
        CHIYODA,
        1,
        code,
        certificate(fed, issuer=TOTTORI, code=code, sequence=sequence),
        person(TOTTORI),
    )
    status, _, _ = await push(speak_as(fed, CHIYODA), batch((1, n)))
    assert status == grpc.StatusCode.OK
    for stub in (fed.prefecture_operator("13"), fed.national_operator()):
        await until_at(stub, code, CHIYODA)


async def test_a_move_across_prefectures_before_the_move_out(fed: Federation) -> None:
    code = await born(fed, TOTTORI)
    # The move-out waits at 312011 while the move-in reaches the national node.
    await fed.prefectures["31"].stop()
    sequence = await moved_out(fed, TOTTORI, code, CHIYODA)
    await stop_node(fed, CHIYODA)
    n = move_in(
        CHIYODA,
        1,
        code,
        certificate(fed, issuer=TOTTORI, code=code, sequence=sequence),
        person(TOTTORI),
    )
    status, _, _ = await push(speak_as(fed, CHIYODA), batch((1, n)))
    assert status == grpc.StatusCode.OK
    await until_at(fed.national_operator(), code, CHIYODA)
    await fed.start_prefecture("31")
    await fed.wait_delivered()
    r = await record(fed.national_operator(), code)
    assert (r.identity.record.local_government_code, r.identity.status) == (
        CHIYODA,
        C.RECORD_STATUS_ACTIVE,
    )
    assert (C.CHANGE_REASON_MOVE_OUT, False) in [
        (h.notification.reason, h.changed_current) for h in r.history
    ]


async def test_a_move_across_prefectures_before_the_issuers_registration(
    fed: Federation,
) -> None:
    # Born and moved out at 312011 while its prefecture is down: the national node
    # has not heard of the resident when the move-in arrives.
    await fed.prefectures["31"].stop()
    r = await fed.operator(TOTTORI).RegisterBirth(
        M.RegisterBirthRequest(person=person(TOTTORI)), timeout=TIMEOUT
    )
    code = r.resident.resident_code
    sequence = await moved_out(fed, TOTTORI, code, CHIYODA)
    await stop_node(fed, CHIYODA)
    n = move_in(
        CHIYODA,
        1,
        code,
        certificate(fed, issuer=TOTTORI, code=code, sequence=sequence),
        person(TOTTORI),
    )
    status, _, _ = await push(speak_as(fed, CHIYODA), batch((1, n)))
    assert status == grpc.StatusCode.OK
    # Applied at once, in the order of cause: the birth and the move-out that
    # arrive later enter the history without undoing it.
    await until_national_cursor(fed, CHIYODA, 1)
    await until_at(fed.national_operator(), code, CHIYODA)
    await fed.start_prefecture("31")
    await until_at(fed.national_operator(), code, CHIYODA)
    await fed.wait_delivered()
    final = await record(fed.national_operator(), code)
    assert (final.identity.record.local_government_code, final.identity.status) == (
        CHIYODA,
        C.RECORD_STATUS_ACTIVE,
    )
    reasons = [(h.notification.origin_code, h.notification.reason) for h in final.history]
    assert (CHIYODA, C.CHANGE_REASON_MOVE_IN) in reasons


def contradictions(node: Any, origin: str) -> float:
    """How many of ``origin``'s notifications contradicted a certificate at ``node``."""
    value = node.metrics.registry.get_sample_value(
        "jukinet_certificate_contradictions_total", {"origin": origin}
    )
    return value or 0.0


async def test_a_certificate_naming_a_sequence_that_is_not_the_move_out_is_reported(
    fed: Federation, caplog: Any
) -> None:
    # 312011 holds the resident and signs a certificate naming its next sequence,
    # which it then uses for something else: a move-out it never notified.
    code = await born(fed, TOTTORI)
    status = await fed.operator(TOTTORI).GetStatus(M.GetMunicipalStatusRequest(), timeout=TIMEOUT)
    ahead = int(status.last_sequence) + 1
    await stop_node(fed, YONAGO)
    signed = certificate(fed, issuer=TOTTORI, code=code, sequence=ahead)
    number = C.MoveOutCertificate.FromString(signed.certificate).certificate_number
    tiers = (fed.prefectures["31"], fed.national)
    before = [contradictions(node, TOTTORI) for node in tiers]
    got, meta, _ = await push(
        speak_as(fed, YONAGO), batch((1, move_in(YONAGO, 1, code, signed, person(TOTTORI))))
    )
    # Applied: 312011's stream has not come as far as the move-out, and no stream
    # waits for another.
    assert got == grpc.StatusCode.OK, meta
    await until_at(fed.national_operator(), code, YONAGO)
    assert [contradictions(node, TOTTORI) for node in tiers] == before
    # 312011's notification at that sequence is another resident's birth.
    caplog.set_level("ERROR", logger="jukinet.delivery.receiver")
    other = await born(fed, TOTTORI, person(TOTTORI, name="鳥取 次郎"))
    assert await last_sequence(fed, TOTTORI) == ahead
    assert [contradictions(node, TOTTORI) for node in tiers] == [b + 1 for b in before]
    lines = [r.getMessage() for r in caplog.records if "did not notify" in r.getMessage()]
    assert len(lines) == 2, lines  # the prefecture and the national node
    assert all(f"{TOTTORI} #{ahead}" in line and number in line for line in lines)
    assert all(code not in line and "鳥取" not in line for line in lines)
    # The birth is applied (it is 312011's own stream) and nothing else stalls.
    for stub in (fed.prefecture_operator("31"), fed.national_operator()):
        await until_at(stub, other, TOTTORI)
        await until_at(stub, code, YONAGO)
