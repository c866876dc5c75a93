"""The agency gateway end to end: residents registered at a municipal counter,
delivered to the national node, then verified, retrieved and searched by
national agencies through the gateway, for the purposes the statutory
registry grants them and nothing else; every answer on record before it
leaves, and disclosed to the resident afterwards."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import statistics
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from gateway.quotas import REFUSAL_BURST, REFUSAL_RATE
from jukinet import pki
from jukinet.codes import new_resident_code
from jukinet.errors import error_metadata
from jukinet.identity import Identity
from jukinet.metrics import UNKNOWN_LABEL, NodeMetrics
from jukinet.purposes import (
    Operation,
    PurposeRegistry,
    load_registry,
)
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, gateway_pb2, gateway_pb2_grpc, municipal_pb2, provision_pb2
from jukinet.vocabulary import operation_label, result_label
from tests.federation import EOF, Federation

TIMEOUT = 15
C = common_pb2
G = gateway_pb2
M = municipal_pb2

TOTTORI = "312011"
CHIYODA = "131016"
ADDRESS_1 = "鳥取県鳥取市東町1丁目220番地"
ADDRESS_2 = "鳥取県鳥取市幸町71番地"

EXISTENCE = "NENKIN-EXISTENCE-CHECK"  # nenkin: verify, verify_batch; status
ADDRESS_CHANGE = "NENKIN-ADDRESS-CHANGE"  # nenkin: verify, retrieve; address
PASSPORT = "MOFA-PASSPORT-ISSUE"  # mofa-passport: verify, retrieve, search; 4 items
NENKIN = "nenkin"
MOFA = "mofa-passport"
AGENCIES = (NENKIN, MOFA)

REGISTRY = load_registry()
MATCH, NO_MATCH, NOT_CLAIMED = G.ITEM_MATCH_MATCH, G.ITEM_MATCH_NO_MATCH, G.ITEM_MATCH_NOT_CLAIMED


# --- helpers ---------------------------------------------------------------------------


@pytest.fixture
async def gw(fed: Federation) -> Federation:
    """The federation with the gateway (packaged purpose registry) in front of it."""
    await fed.start_gateway()
    return fed


def person(
    name: str,
    kana: str = "テスト",
    *,
    birth_date: str = "1960-04-02",
    sex: C.Sex.ValueType = C.SEX_FEMALE,
    address: str = ADDRESS_1,
) -> M.PersonDetails:
    """A person's details, living in Tottori unless told otherwise."""
    return M.PersonDetails(
        name=name,
        name_kana=kana,
        birth_date=birth_date,
        sex=sex,
        address=address,
    )


async def register(fed: Federation, details: M.PersonDetails, municipality: str = TOTTORI) -> str:
    """Register a birth of ``details``; the new resident's code."""
    born = await fed.operator(municipality).RegisterBirth(
        M.RegisterBirthRequest(person=details), timeout=TIMEOUT
    )
    return born.resident.resident_code


async def import_people(
    fed: Federation, people: Sequence[M.PersonDetails], municipality: str = TOTTORI
) -> None:
    """Import ``people`` into ``municipality`` and check every row loaded."""
    rows = [
        M.ImportRow(line=i + 2, source_id=f"src-{i}", person=p, registered_on="2000-01-01")
        for i, p in enumerate(people)
    ]

    async def batches() -> AsyncIterator[M.ImportResidentsRequest]:
        yield M.ImportResidentsRequest(rows=rows)

    call = fed.operator(municipality).ImportResidents(batches(), timeout=TIMEOUT)
    answers = [answer async for answer in call]
    assert [a.imported for a in answers] == [len(people)], answers
    assert not any(a.rejected for a in answers)


def claim_of(details: M.PersonDetails, code: str = "") -> G.ClaimedIdentity:
    """An agency's claim: the four items of ``details``, and ``code`` if given."""
    return G.ClaimedIdentity(
        resident_code=code,
        name=details.name,
        birth_date=details.birth_date,
        sex=details.sex,
        address=details.address,
    )


def assert_within(record: G.ProvidedRecord, allowed: Iterable[str]) -> None:
    """No field outside ``allowed`` is set, nor listed, in ``record``."""
    allowed = set(allowed)
    present = {fd.name for fd, _ in record.ListFields()} - {"fields"}
    assert present <= allowed, f"fields outside the purpose: {present - allowed}"
    assert set(record.fields) <= allowed


def purpose_fields(code: str) -> frozenset[str]:
    """The fields purpose ``code`` may see."""
    purpose = REGISTRY.get(code)
    assert purpose is not None
    return purpose.fields


async def refused(call: Any) -> tuple[grpc.StatusCode, dict[str, str]]:
    """The status and trailing metadata of a call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value.code(), error_metadata(caught.value)


async def batch_call(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub, messages: Sequence[G.VerifyBatchRequest]
) -> list[G.VerifyBatchResponse]:
    """Send ``messages`` over one VerifyBatch stream; every answer."""

    async def requests() -> AsyncIterator[G.VerifyBatchRequest]:
        for message in messages:
            yield message

    call = stub.VerifyBatch(requests(), timeout=60)
    return [response async for response in call]


async def operate(
    stub: gateway_pb2_grpc.GatewayServiceAsyncStub,
    operation: str,
    purpose: str,
    details: M.PersonDetails,
    code: str,
    fields: Sequence[str] = (),
) -> list[G.ProvidedRecord]:
    """Run ``operation`` about one resident; the records that came back."""
    if operation == Operation.VERIFY:
        await stub.Verify(
            G.VerifyRequest(purpose_code=purpose, claim=claim_of(details, code)), timeout=TIMEOUT
        )
        return []
    if operation == Operation.RETRIEVE:
        got = await stub.Retrieve(
            G.RetrieveRequest(purpose_code=purpose, resident_code=code, fields=fields),
            timeout=TIMEOUT,
        )
        return [got.record]
    if operation == Operation.SEARCH:
        found = await stub.Search(
            G.SearchRequest(
                purpose_code=purpose,
                name=details.name,
                birth_date=details.birth_date,
                fields=fields,
            ),
            timeout=TIMEOUT,
        )
        return [c.record for c in found.candidates]
    assert operation == Operation.VERIFY_BATCH
    responses = await batch_call(
        stub,
        [
            G.VerifyBatchRequest(
                purpose_code=purpose,
                items=[G.VerifyBatchItem(item_id="one", claim=claim_of(details, code))],
            )
        ],
    )
    assert [len(r.results) for r in responses] == [1]
    return []


def gateway_metric(fed: Federation, name: str, labels: dict[str, str]) -> float:
    """A sample of the gateway's metrics (0 when never recorded)."""
    assert fed.gateway is not None
    value = fed.gateway.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# --- verification -----------------------------------------------------------------------


async def test_verify_by_code_and_by_the_four_items(gw: Federation) -> None:
    hanako = person("髙田　花子", "タカダ ハナコ", birth_date="1950-03-04")
    code = await register(gw, hanako)
    await gw.wait_delivered()
    nenkin, mofa = gw.agency(NENKIN), gw.agency(MOFA)

    # By code, every item claimed and right.
    got = await nenkin.Verify(
        G.VerifyRequest(purpose_code=EXISTENCE, claim=claim_of(hanako, code)), timeout=TIMEOUT
    )
    v = got.verification
    assert got.provision_id
    assert v.found and v.currently_registered
    assert (v.resident_code, v.name, v.birth_date, v.sex, v.address) == (MATCH,) * 5

    # By code, each item wrong in turn: only that item fails.
    wrong = {
        "name": "髙田　華子",
        "birth_date": "1950-03-05",
        "sex": C.SEX_MALE,
        "address": ADDRESS_2,
    }
    for item, value in wrong.items():
        claim = claim_of(hanako, code)
        setattr(claim, item, value)
        v = (
            await nenkin.Verify(
                G.VerifyRequest(purpose_code=EXISTENCE, claim=claim), timeout=TIMEOUT
            )
        ).verification
        assert v.found, item
        for other in ("resident_code", "name", "birth_date", "sex", "address"):
            assert getattr(v, other) == (NO_MATCH if other == item else MATCH), (item, other)

    # Only the code claimed: the rest is not claimed, not guessed.
    v = (
        await nenkin.Verify(
            G.VerifyRequest(purpose_code=EXISTENCE, claim=G.ClaimedIdentity(resident_code=code)),
            timeout=TIMEOUT,
        )
    ).verification
    assert v.found and v.resident_code == MATCH
    assert (v.name, v.birth_date, v.sex, v.address) == (NOT_CLAIMED,) * 4

    # A variant kanji and full-width digits in the claim still match.
    claim = claim_of(hanako, code)
    claim.name = "高田 花子"
    claim.address = "鳥取県鳥取市東町１丁目２２０番地"
    v = (
        await nenkin.Verify(G.VerifyRequest(purpose_code=EXISTENCE, claim=claim), timeout=TIMEOUT)
    ).verification
    assert (v.name, v.address) == (MATCH, MATCH)

    # By the four items, no code: the person is identified and matches.
    v = (
        await mofa.Verify(
            G.VerifyRequest(purpose_code=PASSPORT, claim=claim_of(hanako)), timeout=TIMEOUT
        )
    ).verification
    assert v.found and v.resident_code == NOT_CLAIMED
    assert (v.name, v.birth_date, v.sex, v.address) == (MATCH,) * 4
    # The passport purpose has no `status` field: it does not learn whether
    # the record is active (see gateway.logic.STATUS_FIELD).
    assert not v.currently_registered

    # Four items that fit nobody; a valid code that was never issued.
    stranger = claim_of(hanako)
    stranger.birth_date = "1951-03-04"
    v = (
        await mofa.Verify(G.VerifyRequest(purpose_code=PASSPORT, claim=stranger), timeout=TIMEOUT)
    ).verification
    assert not v.found
    v = (
        await nenkin.Verify(
            G.VerifyRequest(
                purpose_code=EXISTENCE, claim=G.ClaimedIdentity(resident_code=new_resident_code())
            ),
            timeout=TIMEOUT,
        )
    ).verification
    assert not v.found

    # After a death the record is still found, no longer registered.
    await gw.operator(TOTTORI).RecordDeath(
        M.RecordDeathRequest(resident_code=code, date_of_death="2025-06-01"), timeout=TIMEOUT
    )
    await gw.wait_delivered()
    v = (
        await nenkin.Verify(
            G.VerifyRequest(purpose_code=EXISTENCE, claim=claim_of(hanako, code)),
            timeout=TIMEOUT,
        )
    ).verification
    assert v.found and not v.currently_registered
    assert (v.resident_code, v.name, v.birth_date, v.sex, v.address) == (MATCH,) * 5

    # Bad input is refused by the gateway, naming the field.
    status, meta = await refused(
        nenkin.Verify(
            G.VerifyRequest(purpose_code=EXISTENCE, claim=G.ClaimedIdentity(resident_code="123")),
            timeout=TIMEOUT,
        )
    )
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-field"] == "claim.resident_code"


# --- who may do what -------------------------------------------------------------------


async def test_every_purpose_and_operation_for_each_agency(gw: Federation) -> None:
    """Each seeded purpose x each operation, as each test agency: allowed exactly
    when the registry says so, otherwise PERMISSION_DENIED with the reason."""
    details = person("米子　一郎", "ヨナゴ イチロウ", sex=C.SEX_MALE)
    code = await register(gw, details)
    await gw.wait_delivered()
    assert len(REGISTRY) >= 8
    allowed_seen = 0
    for agency in AGENCIES:
        stub = gw.agency(agency)
        for purpose in REGISTRY:
            for operation in Operation:
                if agency not in purpose.agencies:
                    expected = Reason.AGENCY_NOT_ALLOWED
                elif operation not in purpose.operations:
                    expected = Reason.OPERATION_NOT_ALLOWED
                else:
                    expected = None
                call = operate(stub, operation, purpose.code, details, code)
                if expected is None:
                    for record in await call:
                        assert_within(record, purpose.fields)
                    allowed_seen += 1
                    continue
                status, meta = await refused(call)
                assert status == grpc.StatusCode.PERMISSION_DENIED, (agency, purpose.code)
                assert meta["jukinet-reason"] == expected, (agency, purpose.code, operation)
    # nenkin: existence (verify, batch), address change (verify, retrieve);
    # mofa-passport: passport (verify, retrieve, search).
    assert allowed_seen == 7

    # An unknown purpose, for every operation.
    for operation in Operation:
        status, meta = await refused(
            operate(gw.agency(NENKIN), operation, "NENKIN-EVERYTHING", details, code)
        )
        assert (status, meta["jukinet-reason"]) == (
            grpc.StatusCode.PERMISSION_DENIED,
            Reason.UNKNOWN_PURPOSE,
        )

    # Denials are counted by agency, purpose, operation and reason; unknown
    # purposes share one label.
    assert (
        gateway_metric(
            gw,
            "jukinet_gateway_denials_total",
            {
                "agency": NENKIN,
                "purpose": PASSPORT,
                "operation": "search",
                "reason": Reason.AGENCY_NOT_ALLOWED,
            },
        )
        == 1
    )
    assert (
        gateway_metric(
            gw,
            "jukinet_gateway_denials_total",
            {
                "agency": NENKIN,
                "purpose": "(unknown)",
                "operation": "retrieve",
                "reason": Reason.UNKNOWN_PURPOSE,
            },
        )
        == 1
    )
    assert (
        gateway_metric(
            gw,
            "jukinet_provisions_total",
            {"agency": MOFA, "purpose": PASSPORT, "operation": "retrieve", "result": "provided"},
        )
        == 1
    )
    for operation in Operation:
        count = gateway_metric(
            gw, "jukinet_gateway_operation_seconds_count", {"operation": operation.value}
        )
        assert count > 0, operation


async def test_fields_outside_the_purpose_are_refused_and_never_returned(
    gw: Federation,
) -> None:
    details = person("倉吉　三郎", "クラヨシ サブロウ", sex=C.SEX_MALE, birth_date="1970-07-07")
    code = await register(gw, details)
    await gw.wait_delivered()
    nenkin, mofa = gw.agency(NENKIN), gw.agency(MOFA)

    for stub, purpose, operation, fields in [
        (nenkin, ADDRESS_CHANGE, Operation.RETRIEVE, ["name"]),
        (nenkin, ADDRESS_CHANGE, Operation.RETRIEVE, ["address", "birth_date"]),
        (mofa, PASSPORT, Operation.RETRIEVE, ["resident_code"]),
        (mofa, PASSPORT, Operation.RETRIEVE, ["name_kana"]),
        (mofa, PASSPORT, Operation.RETRIEVE, ["status"]),
        (mofa, PASSPORT, Operation.RETRIEVE, ["domicile"]),  # not a record field at all
        (mofa, PASSPORT, Operation.SEARCH, ["former_surname"]),
        (mofa, PASSPORT, Operation.SEARCH, ["name", "alias"]),
    ]:
        status, meta = await refused(operate(stub, operation, purpose, details, code, fields))
        assert status == grpc.StatusCode.PERMISSION_DENIED, fields
        assert meta["jukinet-reason"] == Reason.FIELD_NOT_ALLOWED, fields

    records: list[tuple[G.ProvidedRecord, frozenset[str]]] = []
    for stub, purpose, operation, fields in [
        (nenkin, ADDRESS_CHANGE, Operation.RETRIEVE, []),
        (nenkin, ADDRESS_CHANGE, Operation.RETRIEVE, ["address"]),
        (mofa, PASSPORT, Operation.RETRIEVE, []),
        (mofa, PASSPORT, Operation.RETRIEVE, ["address", "name"]),
        (mofa, PASSPORT, Operation.SEARCH, []),
        (mofa, PASSPORT, Operation.SEARCH, ["birth_date"]),
    ]:
        got = await operate(stub, operation, purpose, details, code, fields)
        assert got, (purpose, operation)
        allowed = frozenset(fields) or purpose_fields(purpose)
        records += [(r, allowed) for r in got]
    for record, allowed in records:
        assert_within(record, allowed)
        assert record.fields == [f for f in record.fields if f in allowed]
        assert {fd.name for fd, _ in record.ListFields()} - {"fields"} == allowed - {
            "status"  # ACTIVE is not the default value, but never allowed here anyway
        }
    full = records[2][0]
    assert (full.name, full.birth_date, full.sex, full.address) == (
        details.name,
        details.birth_date,
        details.sex,
        details.address,
    )
    assert list(full.fields) == ["name", "birth_date", "sex", "address"]
    assert not full.resident_code and not full.name_kana and not full.local_government_code


async def test_only_agencies_may_call_the_gateway(gw: Federation, tmp_path: Path) -> None:
    details = person("境港　四郎", sex=C.SEX_MALE)
    code = await register(gw, details)
    await gw.wait_delivered()
    for cert in (
        "municipality-312011",
        "prefecture-31",
        "national",
        "gateway",
        "operator-312011-admin",
        "operator-31-admin",
        "operator-national-admin",
    ):
        stub = gw.gateway_as(cert)
        for operation in Operation:
            purpose = PASSPORT if operation != Operation.VERIFY_BATCH else EXISTENCE
            status, meta = await refused(operate(stub, operation, purpose, details, code))
            assert status == grpc.StatusCode.PERMISSION_DENIED, (cert, operation)
            assert meta["jukinet-reason"] == "wrong-identity", (cert, operation)
    # No client certificate, or an agency certificate from another CA: the
    # handshake fails.
    ca = (gw.pki_dir / "ca.pem").read_bytes()
    foreign = tmp_path / "foreign"
    pki.create_ca(foreign, "impostor CA")
    pki.issue(foreign, Identity.agency(NENKIN), f"agency-{NENKIN}")
    for credentials in (
        grpc.ssl_channel_credentials(root_certificates=ca),
        grpc.ssl_channel_credentials(
            root_certificates=ca,
            private_key=(foreign / f"agency-{NENKIN}.key").read_bytes(),
            certificate_chain=(foreign / f"agency-{NENKIN}.pem").read_bytes(),
        ),
    ):
        channel = grpc.aio.secure_channel(f"127.0.0.1:{gw.gateway_port}", credentials)
        try:
            stub = gateway_pb2_grpc.GatewayServiceStub(channel)
            status, _ = await refused(
                stub.Verify(
                    G.VerifyRequest(
                        purpose_code=EXISTENCE, claim=G.ClaimedIdentity(resident_code=code)
                    ),
                    timeout=TIMEOUT,
                )
            )
            assert status == grpc.StatusCode.UNAVAILABLE
        finally:
            await channel.close(grace=None)

    # Refused at the door: nothing reached the national node.
    disclosed = await gw.operator(TOTTORI).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=code), timeout=TIMEOUT
    )
    assert list(disclosed.provisions) == []


# --- retrieval --------------------------------------------------------------------------


async def test_retrieve_now_and_as_of_a_date(gw: Federation) -> None:
    details = person("湯梨浜　五郎", sex=C.SEX_MALE, birth_date="1980-02-29")
    code = await register(gw, details)
    await gw.operator(TOTTORI).Relocate(
        M.RelocateRequest(resident_code=code, new_address=ADDRESS_2, effective_date="2025-04-01"),
        timeout=TIMEOUT,
    )
    await gw.wait_delivered()
    nenkin, mofa = gw.agency(NENKIN), gw.agency(MOFA)

    async def address(
        stub: gateway_pb2_grpc.GatewayServiceAsyncStub, purpose: str, as_of: str
    ) -> str:
        got = await stub.Retrieve(
            G.RetrieveRequest(purpose_code=purpose, resident_code=code, as_of=as_of),
            timeout=TIMEOUT,
        )
        assert got.provision_id
        assert_within(got.record, purpose_fields(purpose))
        return got.record.address

    for stub, purpose in ((nenkin, ADDRESS_CHANGE), (mofa, PASSPORT)):
        assert await address(stub, purpose, "") == ADDRESS_2
        assert await address(stub, purpose, "2025-04-01") == ADDRESS_2
        assert await address(stub, purpose, "2025-03-31") == ADDRESS_1
        assert await address(stub, purpose, "1980-02-29") == ADDRESS_1

    old = await mofa.Retrieve(
        G.RetrieveRequest(purpose_code=PASSPORT, resident_code=code, as_of="2000-01-01"),
        timeout=TIMEOUT,
    )
    assert (old.record.name, old.record.address) == (details.name, ADDRESS_1)

    # Before the birth there was no record; an unknown code has none.
    for as_of, wanted in (("1979-12-31", code), ("", new_resident_code())):
        status, meta = await refused(
            nenkin.Retrieve(
                G.RetrieveRequest(purpose_code=ADDRESS_CHANGE, resident_code=wanted, as_of=as_of),
                timeout=TIMEOUT,
            )
        )
        assert status == grpc.StatusCode.NOT_FOUND
        assert meta["jukinet-reason"] == "not-found"

    for request, field in (
        (G.RetrieveRequest(purpose_code=ADDRESS_CHANGE, resident_code="1234"), "resident_code"),
        (
            G.RetrieveRequest(purpose_code=ADDRESS_CHANGE, resident_code=code, as_of="2025-02-30"),
            "as_of",
        ),
    ):
        status, meta = await refused(nenkin.Retrieve(request, timeout=TIMEOUT))
        assert status == grpc.StatusCode.INVALID_ARGUMENT
        assert meta["jukinet-field"] == field


# --- search -----------------------------------------------------------------------------

SEARCH_PEOPLE = [
    # (stored name, asked as)
    ("髙橋　邊子", "高橋　辺子"),
    ("山﨑　太郎", "山崎　太郎"),
    ("渡邉　一郎", "渡辺　一郎"),
    ("渡邊　二郎", "渡辺　二郎"),
    ("齋藤　花子", "斎藤　花子"),
    ("澤田　次郎", "沢田　次郎"),
    ("濱口　三郎", "浜口　三郎"),
    ("葛\U000e0100西　花子", "葛西　花子"),
]


async def test_search_by_name_across_variant_characters(gw: Federation) -> None:
    people = [person(stored, birth_date="1975-05-05") for stored, _ in SEARCH_PEOPLE]
    people += [
        person("高橋　一郎", birth_date="1965-01-01", sex=C.SEX_MALE),
        person("髙橋　一郎", birth_date="1965-01-01", sex=C.SEX_MALE, address=ADDRESS_2),
        person("斎藤　健", birth_date="1990-09-09", sex=C.SEX_MALE),
    ]
    await import_people(gw, people)
    await gw.wait_delivered()
    mofa = gw.agency(MOFA)
    allowed = purpose_fields(PASSPORT)

    async def search(name: str, **kw: Any) -> list[G.SearchCandidate]:
        found = await mofa.Search(
            G.SearchRequest(purpose_code=PASSPORT, name=name, **kw), timeout=TIMEOUT
        )
        assert found.provision_id
        for candidate in found.candidates:
            assert_within(candidate.record, allowed)
        return list(found.candidates)

    for stored, asked in SEARCH_PEOPLE:
        found = await search(asked)
        assert [c.record.name for c in found] == [stored], asked
        found = await search(asked, birth_date="1975-05-05")
        assert [c.record.name for c in found] == [stored], asked
        # The stored form itself is an exact match and ranks higher.
        exact = await search(stored)
        assert [c.record.name for c in exact] == [stored]
        assert exact[0].score > found[0].score

    # Both 高橋 and 髙橋 exist: the one written as asked comes first.
    for asked, other in (("高橋　一郎", "髙橋　一郎"), ("髙橋　一郎", "高橋　一郎")):
        found = await search(asked)
        assert [c.record.name for c in found] == [asked, other]
        assert found[0].score > found[1].score
    # The address breaks no tie of names, but adds to the score.
    found = await search("高橋　一郎", address=ADDRESS_2)
    assert [c.record.name for c in found] == ["高橋　一郎", "髙橋　一郎"]
    assert found[0].record.address == ADDRESS_1

    # 斉 and 斎 are different characters: no candidate, never a guess.
    assert await search("斉藤　健") == []
    assert [c.record.name for c in await search("斎藤　健")] == ["斎藤　健"]

    # max_candidates: 0 is the purpose's cap (5), above it is refused.
    assert len(await search("高橋　一郎", max_candidates=1)) == 1
    status, meta = await refused(
        mofa.Search(
            G.SearchRequest(purpose_code=PASSPORT, name="高橋　一郎", max_candidates=6),
            timeout=TIMEOUT,
        )
    )
    assert status == grpc.StatusCode.INVALID_ARGUMENT
    assert meta["jukinet-field"] == "max_candidates"


async def test_search_caps_candidates_at_the_purpose_limit(gw: Federation) -> None:
    await import_people(
        gw, [person("米子　同名", birth_date=f"19{50 + i}-01-01") for i in range(8)]
    )
    await gw.wait_delivered()
    found = await gw.agency(MOFA).Search(
        G.SearchRequest(purpose_code=PASSPORT, name="米子　同名"), timeout=TIMEOUT
    )
    cap = REGISTRY.get(PASSPORT).quota.max_search_candidates  # type: ignore[union-attr]
    assert cap == 5
    assert len(found.candidates) == cap


# --- batches ----------------------------------------------------------------------------


def roomy(*codes: str) -> PurposeRegistry:
    """The packaged registry, with purposes ``codes`` given a quota that never
    runs out (for tests about something else than quotas)."""
    packaged = load_registry()
    plenty = 1_000_000
    return PurposeRegistry(
        [
            dataclasses.replace(
                p,
                quota=dataclasses.replace(p.quota, requests_per_second=plenty, burst=plenty),
            )
            if p.code in codes
            else p
            for p in packaged
        ],
        [a for c in sorted(packaged.agency_codes) if (a := packaged.agency(c)) is not None],
    )


async def test_verify_batch_in_order_over_several_messages(fed: Federation) -> None:
    # 2,500 verifications and more: past the packaged quota of the purpose.
    await fed.start_gateway(registry=roomy(EXISTENCE))
    gw = fed
    people = [
        person(f"日南　{given}", birth_date=f"194{i}-0{i + 1}-1{i}", sex=C.SEX_MALE)
        for i, given in enumerate(["一郎", "二郎", "三郎", "四郎"])
    ]
    codes = [await register(gw, p) for p in people]
    await gw.operator(TOTTORI).RecordDeath(
        M.RecordDeathRequest(resident_code=codes[3], date_of_death="2025-01-01"), timeout=TIMEOUT
    )
    await gw.wait_delivered()
    rng = random.Random(5)
    unknown = new_resident_code(rng)

    items: list[G.VerifyBatchItem] = []
    expected: list[tuple[bool, bool, int]] = []  # found, registered, birth date item
    for i in range(2500):
        kind = i % 10
        if kind == 9:  # an unknown code
            claim = G.ClaimedIdentity(resident_code=unknown, birth_date="1950-01-01")
            expected.append((False, False, G.ITEM_MATCH_UNSPECIFIED))
        elif kind == 8:  # the four items, no code
            claim = claim_of(people[1])
            expected.append((True, True, MATCH))
        elif kind == 7:  # a wrong birth date
            claim = claim_of(people[0], codes[0])
            claim.birth_date = "1999-12-31"
            expected.append((True, True, NO_MATCH))
        else:
            who = kind % 4
            claim = claim_of(people[who], codes[who])
            expected.append((True, who != 3, MATCH))
        items.append(G.VerifyBatchItem(item_id=f"item-{i:04d}", claim=claim))
    messages = [
        G.VerifyBatchRequest(purpose_code=EXISTENCE, items=items[start : start + 1000])
        for start in range(0, 2500, 1000)
    ]
    responses = await batch_call(gw.agency(NENKIN), messages)
    assert [len(r.results) for r in responses] == [1000, 1000, 500]
    results = [result for r in responses for result in r.results]
    assert [r.item_id for r in results] == [item.item_id for item in items]
    for result, (found, registered, birth) in zip(results, expected, strict=True):
        v = result.verification
        assert (v.found, v.currently_registered, v.birth_date) == (found, registered, birth), (
            result.item_id
        )

    # A message over max_batch_size: the messages before it are answered, then
    # INVALID_ARGUMENT names the field.
    stub = gw.agency(NENKIN)
    small = G.VerifyBatchRequest(purpose_code=EXISTENCE, items=items[:10])
    big = G.VerifyBatchRequest(purpose_code=EXISTENCE, items=items[:1001])
    got: list[G.VerifyBatchResponse] = []

    async def requests() -> AsyncIterator[G.VerifyBatchRequest]:
        yield small
        yield big
        yield small

    call = stub.VerifyBatch(requests(), timeout=60)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            got.append(response)
    assert [len(r.results) for r in got] == [10]
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(caught.value)["jukinet-field"] == "items"

    # A bad claim inside a message names the item.
    bad = G.VerifyBatchRequest(
        purpose_code=EXISTENCE,
        items=[items[0], G.VerifyBatchItem(item_id="x", claim=G.ClaimedIdentity(name="名"))],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch_call(stub, [bad])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_metadata(caught.value)["jukinet-field"] == "items[1].claim"

    # A purpose without batches, in the middle of a stream.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch_call(
            stub, [small, G.VerifyBatchRequest(purpose_code=ADDRESS_CHANGE, items=items[:1])]
        )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_metadata(caught.value)["jukinet-reason"] == Reason.OPERATION_NOT_ALLOWED


# --- quotas -----------------------------------------------------------------------------

SMALL_QUOTAS = """
[[agency]]
code = "nenkin"
name = { ja = "日本年金機構", en = "Japan Pension Service" }

[[agency]]
code = "mofa-passport"
name = { ja = "外務省（旅券）", en = "Passport office" }

[[purpose]]
code = "TEST-SMALL-QUOTA"
statute = { ja = "試験法", en = "Test Act" }
task = { ja = "試験", en = "Testing quotas" }
agencies = ["nenkin"]
operations = ["verify", "verify_batch"]
fields = ["status"]
quota = { requests_per_second = 0.5, burst = 10, max_batch_size = 5 }

[[purpose]]
code = "TEST-OTHER"
statute = { ja = "試験法", en = "Test Act" }
task = { ja = "試験", en = "Another purpose" }
agencies = ["nenkin", "mofa-passport"]
operations = ["verify"]
fields = []
quota = { requests_per_second = 0.5, burst = 3 }
"""


class FakeClock:
    """The gateway's quota clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """The current time."""
        return self.now


async def test_quota_exhausted_after_the_burst(fed: Federation, tmp_path: Path) -> None:
    registry_file = tmp_path / "purposes.toml"
    registry_file.write_text(SMALL_QUOTAS, encoding="utf-8")
    clock = FakeClock()
    await fed.start_gateway(purposes=registry_file, clock=clock)
    details = person("岩美　六郎", sex=C.SEX_MALE)
    code = await register(fed, details)
    await fed.wait_delivered()
    nenkin, mofa = fed.agency(NENKIN), fed.agency(MOFA)

    def verify(stub: gateway_pb2_grpc.GatewayServiceAsyncStub, purpose: str) -> Any:
        return stub.Verify(
            G.VerifyRequest(purpose_code=purpose, claim=G.ClaimedIdentity(resident_code=code)),
            timeout=TIMEOUT,
        )

    for _ in range(10):
        await verify(nenkin, "TEST-SMALL-QUOTA")
    status, meta = await refused(verify(nenkin, "TEST-SMALL-QUOTA"))
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert meta["jukinet-reason"] == "quota-exceeded"
    assert meta["retry-after-ms"] == "2000"  # one token at 0.5 per second
    # Other purposes of the agency, and other agencies, have buckets of their own.
    for _ in range(3):
        await verify(nenkin, "TEST-OTHER")
        await verify(mofa, "TEST-OTHER")

    clock.now += 1.5
    status, meta = await refused(verify(nenkin, "TEST-SMALL-QUOTA"))
    assert meta["retry-after-ms"] == "500"
    clock.now += 0.5
    await verify(nenkin, "TEST-SMALL-QUOTA")
    status, _ = await refused(verify(nenkin, "TEST-SMALL-QUOTA"))
    assert status == grpc.StatusCode.RESOURCE_EXHAUSTED

    # A batch message takes one token per item: two messages of five items
    # empty the bucket of ten, the third is refused after the first two are
    # answered and must wait for five tokens.
    clock.now += 60
    message = G.VerifyBatchRequest(
        purpose_code="TEST-SMALL-QUOTA",
        items=[
            G.VerifyBatchItem(item_id=str(i), claim=G.ClaimedIdentity(resident_code=code))
            for i in range(5)
        ],
    )
    got: list[G.VerifyBatchResponse] = []

    async def three() -> AsyncIterator[G.VerifyBatchRequest]:
        for _ in range(3):
            yield message

    call: Any = nenkin.VerifyBatch(three(), timeout=TIMEOUT)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        async for response in call:
            got.append(response)
    assert [len(r.results) for r in got] == [5, 5]
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_metadata(caught.value)["retry-after-ms"] == "10000"

    assert (
        gateway_metric(
            fed,
            "jukinet_gateway_denials_total",
            {
                "agency": NENKIN,
                "purpose": "TEST-SMALL-QUOTA",
                "operation": "verify",
                "reason": "quota-exceeded",
            },
        )
        == 3
    )
    # The packaged registry is not in use: its purposes are unknown here.
    status, meta = await refused(verify(nenkin, EXISTENCE))
    assert meta["jukinet-reason"] == Reason.UNKNOWN_PURPOSE


# --- provision records ------------------------------------------------------------------

SQLITE_TRIGGER = [
    "CREATE TRIGGER provisions_full BEFORE INSERT ON provisions "
    "BEGIN SELECT RAISE(ABORT, 'full'); END"
]
SQLITE_DROP = ["DROP TRIGGER provisions_full"]
PG_TRIGGER = [
    "CREATE FUNCTION provisions_full() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'full'; END $$",
    "CREATE TRIGGER provisions_full BEFORE INSERT ON provisions "
    "FOR EACH ROW EXECUTE FUNCTION provisions_full()",
]
PG_DROP = ["DROP TRIGGER provisions_full ON provisions", "DROP FUNCTION provisions_full()"]


async def national_sql(fed: Federation, statements: Sequence[str]) -> None:
    """Run ``statements`` in one transaction on the national node's database."""
    assert fed.national is not None
    async with fed.national.db.write() as conn:
        for statement in statements:
            await conn.exec_driver_sql(statement)


async def test_no_answer_without_its_provision_record(gw: Federation) -> None:
    """Both backends: a trigger makes every insert into `provisions` fail."""
    details = person("智頭　七子", birth_date="1955-05-15")
    code = await register(gw, details)
    await gw.wait_delivered()
    assert gw.national is not None
    sqlite = gw.national.db.is_sqlite
    nenkin, mofa = gw.agency(NENKIN), gw.agency(MOFA)
    retrieve = G.RetrieveRequest(purpose_code=PASSPORT, resident_code=code)

    first = await mofa.Retrieve(retrieve, timeout=TIMEOUT)
    assert first.record.name == details.name

    await national_sql(gw, SQLITE_TRIGGER if sqlite else PG_TRIGGER)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await mofa.Retrieve(retrieve, timeout=TIMEOUT)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details.name not in (caught.value.details() or "")
    assert code not in (caught.value.details() or "")
    for call in (
        mofa.Search(G.SearchRequest(purpose_code=PASSPORT, name=details.name), timeout=TIMEOUT),
        nenkin.Verify(
            G.VerifyRequest(purpose_code=EXISTENCE, claim=G.ClaimedIdentity(resident_code=code)),
            timeout=TIMEOUT,
        ),
        batch_call(
            nenkin,
            [
                G.VerifyBatchRequest(
                    purpose_code=EXISTENCE,
                    items=[G.VerifyBatchItem(claim=G.ClaimedIdentity(resident_code=code))],
                )
            ],
        ),
    ):
        status, _ = await refused(call)
        assert status == grpc.StatusCode.UNAVAILABLE
    # A refusal still refuses when it cannot be recorded now; the gateway
    # keeps it in its spool and records it once the national node can.
    status, meta = await refused(
        nenkin.Retrieve(
            G.RetrieveRequest(purpose_code=PASSPORT, resident_code=code), timeout=TIMEOUT
        )
    )
    assert (status, meta["jukinet-reason"]) == (
        grpc.StatusCode.PERMISSION_DENIED,
        Reason.AGENCY_NOT_ALLOWED,
    )

    assert gw.gateway is not None
    assert gw.gateway.spool.pending == 1

    await national_sql(gw, SQLITE_DROP if sqlite else PG_DROP)
    again = await mofa.Retrieve(retrieve, timeout=TIMEOUT)
    assert again.record.name == details.name
    for _ in range(100):
        if gw.gateway.spool.pending == 0:
            break
        await asyncio.sleep(0.1)
    assert gw.gateway.spool.pending == 0

    disclosed = await gw.operator(TOTTORI).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=code), timeout=TIMEOUT
    )
    provided = [p.provision_id for p in disclosed.provisions if p.agency_code == MOFA]
    assert provided == [first.provision_id, again.provision_id]
    denied = [p for p in disclosed.provisions if p.agency_code == NENKIN]
    assert [(p.purpose_code, p.result) for p in denied] == [
        (PASSPORT, provision_pb2.PROVISION_RESULT_DENIED)
    ]
    assert len(disclosed.provisions) == 3


# --- disclosure -------------------------------------------------------------------------


async def test_disclosure_lists_exactly_the_residents_provisions(gw: Federation) -> None:
    x = person("大山　八重", "ダイセン ヤエ", birth_date="1948-08-08")
    y = person("大山　九郎", "ダイセン クロウ", birth_date="1949-09-09", sex=C.SEX_MALE)
    x_code, y_code = await register(gw, x), await register(gw, y)
    await gw.wait_delivered()
    nenkin, mofa = gw.agency(NENKIN), gw.agency(MOFA)
    passport_fields = ["name", "birth_date", "sex", "address"]

    def verify_request(purpose: str, claim: G.ClaimedIdentity) -> G.VerifyRequest:
        return G.VerifyRequest(purpose_code=purpose, claim=claim)

    expected_x: list[tuple[str, str, str, list[str], str]] = []
    ids_x: list[str] = []

    # As the pension service.
    got = await nenkin.Verify(verify_request(EXISTENCE, claim_of(x, x_code)), timeout=TIMEOUT)
    ids_x.append(got.provision_id)
    expected_x.append((NENKIN, EXISTENCE, "verify", [], "match"))
    wrong = claim_of(x, x_code)
    wrong.birth_date = "1948-08-09"
    got = await nenkin.Verify(verify_request(EXISTENCE, wrong), timeout=TIMEOUT)
    ids_x.append(got.provision_id)
    expected_x.append((NENKIN, EXISTENCE, "verify", [], "no-match"))
    record = await nenkin.Retrieve(
        G.RetrieveRequest(purpose_code=ADDRESS_CHANGE, resident_code=x_code), timeout=TIMEOUT
    )
    ids_x.append(record.provision_id)
    expected_x.append((NENKIN, ADDRESS_CHANGE, "retrieve", ["address"], "provided"))
    for purpose in (PASSPORT, EXISTENCE):  # another agency's purpose; an operation not allowed
        await refused(
            nenkin.Retrieve(
                G.RetrieveRequest(purpose_code=purpose, resident_code=x_code), timeout=TIMEOUT
            )
        )
        expected_x.append((NENKIN, purpose, "retrieve", [], "denied"))
        ids_x.append("")
    await batch_call(
        nenkin,
        [
            G.VerifyBatchRequest(
                purpose_code=EXISTENCE,
                items=[
                    G.VerifyBatchItem(item_id="x", claim=claim_of(x, x_code)),
                    G.VerifyBatchItem(item_id="y", claim=claim_of(y, y_code)),
                ],
            )
        ],
    )
    expected_x.append((NENKIN, EXISTENCE, "verify_batch", [], "match"))
    ids_x.append("")
    await nenkin.Verify(verify_request(EXISTENCE, claim_of(y, y_code)), timeout=TIMEOUT)

    # As the passport office.
    got = await mofa.Verify(verify_request(PASSPORT, claim_of(x)), timeout=TIMEOUT)
    ids_x.append(got.provision_id)
    expected_x.append((MOFA, PASSPORT, "verify", [], "match"))
    found = await mofa.Search(
        G.SearchRequest(purpose_code=PASSPORT, name="大山　八重"), timeout=TIMEOUT
    )
    assert len(found.candidates) == 1
    ids_x.append(found.provision_id)
    expected_x.append((MOFA, PASSPORT, "search", passport_fields, "candidate"))
    record = await mofa.Retrieve(
        G.RetrieveRequest(purpose_code=PASSPORT, resident_code=x_code, fields=["address", "name"]),
        timeout=TIMEOUT,
    )
    ids_x.append(record.provision_id)
    expected_x.append((MOFA, PASSPORT, "retrieve", ["name", "address"], "provided"))
    await refused(
        mofa.Retrieve(
            G.RetrieveRequest(purpose_code=PASSPORT, resident_code=x_code, fields=["name_kana"]),
            timeout=TIMEOUT,
        )
    )
    expected_x.append((MOFA, PASSPORT, "retrieve", [], "denied"))
    ids_x.append("")
    await refused(mofa.Verify(verify_request("NO-SUCH-PURPOSE", claim_of(x, x_code))))
    expected_x.append((MOFA, "NO-SUCH-PURPOSE", "verify", [], "denied"))
    ids_x.append("")
    # A refused batch is recorded once for each resident it names.
    with pytest.raises(grpc.aio.AioRpcError):
        await batch_call(
            mofa,
            [
                G.VerifyBatchRequest(
                    purpose_code=EXISTENCE,
                    items=[
                        G.VerifyBatchItem(item_id="1", claim=claim_of(x, x_code)),
                        G.VerifyBatchItem(item_id="2", claim=claim_of(x, x_code)),
                        G.VerifyBatchItem(item_id="3", claim=claim_of(y)),
                    ],
                )
            ],
        )
    expected_x.append((MOFA, EXISTENCE, "verify_batch", [], "denied"))
    ids_x.append("")
    # Neither names the resident: not part of their disclosure.
    await mofa.Search(G.SearchRequest(purpose_code=PASSPORT, name="大山　十子"), timeout=TIMEOUT)
    await refused(mofa.Verify(verify_request(EXISTENCE, claim_of(x))))

    def seen(code: str, disclosed: provision_pb2.DiscloseResponse) -> list[Any]:
        assert all(p.resident_code == code for p in disclosed.provisions)
        assert all(p.provided_at for p in disclosed.provisions)
        return [
            (
                p.agency_code,
                p.purpose_code,
                operation_label(p.operation),
                list(p.fields),
                result_label(p.result),
            )
            for p in disclosed.provisions
        ]

    disclosed = await gw.operator(TOTTORI).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=x_code), timeout=TIMEOUT
    )
    assert disclosed.identity.record.name == x.name
    assert seen(x_code, disclosed) == expected_x
    for pid, provision in zip(ids_x, disclosed.provisions, strict=True):
        if pid:
            assert provision.provision_id == pid
    assert len({p.provision_id for p in disclosed.provisions}) == len(expected_x)

    disclosed = await gw.operator(TOTTORI).DiscloseProvisions(
        provision_pb2.DiscloseRequest(resident_code=y_code), timeout=TIMEOUT
    )
    assert seen(y_code, disclosed) == [
        (NENKIN, EXISTENCE, "verify_batch", [], "match"),
        (NENKIN, EXISTENCE, "verify", [], "match"),
    ]


# --- refusals cost quota; labels from closed sets ----------------------------------------


async def provision_rows(fed: Federation) -> int:
    """How many provision records (answers and refusals) the national node holds."""
    assert fed.national is not None
    async with fed.national.db.read() as conn:
        result = await conn.exec_driver_sql("SELECT count(*) FROM provisions")
        return int(result.scalar_one())


Series = tuple[str, str, tuple[tuple[str, str], ...]]
"""A time series: the node, the sample's name, its labels."""


def labelled_series(node: str, metrics: NodeMetrics) -> set[Series]:
    """Every time series of ``metrics`` that names an agency or a purpose."""
    return {
        (node, sample.name, tuple(sorted(sample.labels.items())))
        for family in metrics.registry.collect()
        for sample in family.samples
        if ("purpose" in sample.labels or "agency" in sample.labels)
        and not sample.name.endswith("_created")  # a timestamp beside each counter
    }


def both_nodes_series(fed: Federation) -> set[Series]:
    """The agency- or purpose-labelled series of the gateway and the national node."""
    assert fed.gateway is not None and fed.national is not None
    return labelled_series("gateway", fed.gateway.metrics) | labelled_series(
        "national", fed.national.metrics
    )


def assert_closed_labels(fed: Federation) -> None:
    """Every agency and purpose label of both nodes is registered, or "(unknown)"."""
    purposes = {p.code for p in REGISTRY} | {UNKNOWN_LABEL}
    agencies = set(REGISTRY.agency_codes) | {UNKNOWN_LABEL}
    for _node, _name, labels in both_nodes_series(fed):
        values = dict(labels)
        assert values.get("purpose", UNKNOWN_LABEL) in purposes, labels
        assert values.get("agency", UNKNOWN_LABEL) in agencies, labels


async def test_invented_purposes_run_out_of_quota_and_create_no_series(gw: Federation) -> None:
    """2,000 Verify calls with invented purposes naming one resident: refused
    until the agency's refusal bucket is empty, then RESOURCE_EXHAUSTED with
    nothing recorded; a bounded number of rows; no series per invented code."""
    details = person("湯梨浜　十子", birth_date="1961-01-01")
    code = await register(gw, details)
    await gw.wait_delivered()
    nenkin = gw.agency(NENKIN)
    claim = G.ClaimedIdentity(resident_code=code)
    rows_before = await provision_rows(gw)
    series_before = both_nodes_series(gw)

    started = time.monotonic()
    outcomes: list[tuple[grpc.StatusCode, str]] = []

    async def one(i: int) -> None:
        status, meta = await refused(
            nenkin.Verify(G.VerifyRequest(purpose_code=f"INVENTED-{i}", claim=claim), timeout=60)
        )
        outcomes.append((status, meta["jukinet-reason"]))

    for start in range(0, 2000, 50):
        await asyncio.gather(*(one(i) for i in range(start, start + 50)))
    elapsed = time.monotonic() - started

    denied = outcomes.count((grpc.StatusCode.PERMISSION_DENIED, Reason.UNKNOWN_PURPOSE))
    exhausted = outcomes.count((grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.QUOTA_EXCEEDED))
    assert denied + exhausted == 2000, set(outcomes)
    # Once empty, the bucket stays (nearly) empty: its refill (REFUSAL_RATE per
    # second) lets only a few of the last 50 calls through, however slow the run.
    last = [code for code, _ in outcomes[-50:]]
    assert last.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 40, last
    assert exhausted > 0
    # Bounded by the refusal bucket: its burst and its rate over the attack.
    bound = REFUSAL_BURST + REFUSAL_RATE * elapsed + 1
    assert denied <= bound
    assert await provision_rows(gw) - rows_before == denied

    # Every new series carries the one "(unknown)" purpose: none per code.
    new = both_nodes_series(gw) - series_before
    assert new, "the refusals are counted"
    for _node, _name, labels in new:
        assert dict(labels)["purpose"] == UNKNOWN_LABEL, labels
    assert len(new) <= 4  # denials and provisions, refused and over quota
    assert_closed_labels(gw)

    # The bucket refills at its rate only: more invented codes add rows at
    # that rate and no series.
    rows, series = await provision_rows(gw), both_nodes_series(gw)
    started = time.monotonic()
    later: list[tuple[grpc.StatusCode, str]] = []
    for i in range(100):
        status, meta = await refused(
            nenkin.Verify(G.VerifyRequest(purpose_code=f"OTHER-{i}", claim=claim), timeout=60)
        )
        later.append((status, meta["jukinet-reason"]))
    elapsed = time.monotonic() - started
    added = await provision_rows(gw) - rows
    assert added == later.count((grpc.StatusCode.PERMISSION_DENIED, Reason.UNKNOWN_PURPOSE))
    assert added <= REFUSAL_RATE * elapsed + 1
    assert later.count((grpc.StatusCode.RESOURCE_EXHAUSTED, Reason.QUOTA_EXCEEDED)) >= 100 - added
    assert both_nodes_series(gw) == series

    # The agency's statutory work has its own bucket, untouched by its refusals.
    answer = await nenkin.Verify(G.VerifyRequest(purpose_code=EXISTENCE, claim=claim))
    assert answer.verification.found


BAD_PURPOSE_CODES = [
    "",
    "nenkin-existence-check",
    "12345678901",  # a resident code
    "湯梨浜　十子",  # a name
    "NENKIN--EXISTENCE",
    "-NENKIN",
    "NENKIN-",
    "NENKIN EXISTENCE",
    "NENKIN-EXISTENCE-CHECK\n",
    "NENKIN\u202eKCEHC",
    "NENKIN-EXISTENCE-CHECK\x00",
    "Ａ",
    "A" * 65,
]


async def test_purpose_code_syntax_refused_before_anything_is_recorded(gw: Federation) -> None:
    details = person("北栄　十一", sex=C.SEX_MALE, birth_date="1962-02-02")
    code = await register(gw, details)
    await gw.wait_delivered()
    rows_before = await provision_rows(gw)
    series_before = both_nodes_series(gw)
    for stub, agency in ((gw.agency(NENKIN), NENKIN), (gw.agency(MOFA), MOFA)):
        for bad in BAD_PURPOSE_CODES:
            for operation in Operation:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await operate(stub, operation, bad, details, code)
                err = caught.value
                meta = error_metadata(err)
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (agency, bad, operation)
                assert meta["jukinet-reason"] == Reason.INVALID_ARGUMENT
                assert meta["jukinet-field"] == "purpose_code"
                # Never echoed back.
                if bad:
                    assert bad not in (err.details() or "")
    assert await provision_rows(gw) == rows_before
    new = both_nodes_series(gw) - series_before
    for _node, _name, labels in new:
        assert dict(labels)["purpose"] == UNKNOWN_LABEL, labels
    assert_closed_labels(gw)
    assert gateway_metric(
        gw,
        "jukinet_gateway_denials_total",
        {
            "agency": NENKIN,
            "purpose": UNKNOWN_LABEL,
            "operation": "verify",
            "reason": Reason.INVALID_ARGUMENT,
        },
    ) == len(BAD_PURPOSE_CODES)


async def test_a_denied_batch_of_a_million_codes_is_refused_by_its_size(gw: Federation) -> None:
    details = person("琴浦　十二", birth_date="1963-03-03")
    code = await register(gw, details)
    await gw.wait_delivered()
    nenkin = gw.agency(NENKIN)
    distinct = [new_resident_code() for _ in range(1000)]
    items = [G.VerifyBatchItem(claim=G.ClaimedIdentity(resident_code=c)) for c in (distinct * 1000)]
    assert len(items) == 1_000_000
    rows_before = await provision_rows(gw)
    series_before = both_nodes_series(gw)
    assert gw.gateway is not None
    refusal_tokens = gw.gateway.quotas.refusal_bucket(NENKIN).tokens
    # A million codes is about 17 MB: over the gateway's receive limit, so the
    # transport refuses it before any handler runs. 2,000 codes fit the message
    # but not the largest batch of any purpose: refused by its size, naming items.
    sized = [(items, grpc.StatusCode.RESOURCE_EXHAUSTED), (items[:2000], None)]
    for purpose in ("NO-SUCH-PURPOSE", PASSPORT, EXISTENCE):  # unknown, not nenkin's, nenkin's
        for batch, transport in sized:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await batch_call(nenkin, [G.VerifyBatchRequest(purpose_code=purpose, items=batch)])
            err = caught.value
            if transport is not None:
                assert err.code() == transport, purpose
                continue
            meta = error_metadata(err)
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, purpose
            assert meta["jukinet-reason"] == Reason.INVALID_ARGUMENT
            assert meta["jukinet-field"] == "items"
            assert "2000 items" in (err.details() or "")
    assert await provision_rows(gw) == rows_before
    assert gw.gateway.quotas.refusal_bucket(NENKIN).tokens >= refusal_tokens
    new = both_nodes_series(gw) - series_before
    for _node, _name, labels in new:
        assert dict(labels)["purpose"] == UNKNOWN_LABEL, labels

    # Within the size, a denied message is recorded once per resident it names.
    small = [G.VerifyBatchItem(claim=G.ClaimedIdentity(resident_code=c)) for c in distinct[:10]]
    small.append(G.VerifyBatchItem(claim=G.ClaimedIdentity(resident_code=code)))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await batch_call(nenkin, [G.VerifyBatchRequest(purpose_code=PASSPORT, items=small)])
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await provision_rows(gw) == rows_before + 11


# --- one agency at its quota does not slow another ---------------------------------------

PHASE_SECONDS = 1.5
ROUNDS = 4
ATTACK_BATCH = 250


async def test_an_agency_at_its_quota_leaves_another_within_twice_its_latency(
    fed: Federation,
) -> None:
    """The pension service sends VerifyBatch messages as fast as its packaged
    quota lets it (honouring retry-after); the passport office's Verify median
    stays within 2x of its median while the pension service is idle. Phases
    alternate, so a machine busy with other work loads both alike."""
    packaged = load_registry()
    # The passport office's own quota out of the way: it measures, it is not limited.
    registry = roomy(PASSPORT)
    await fed.start_gateway(registry=registry)
    details = person("三朝　十三", birth_date="1964-04-04")
    code = await register(fed, details)
    await fed.wait_delivered()
    nenkin, mofa = fed.agency(NENKIN), fed.agency(MOFA)
    existence = packaged.get(EXISTENCE)
    assert existence is not None
    rate = existence.quota.requests_per_second

    attacking = asyncio.Event()
    verified = 0
    refusals = 0
    message = G.VerifyBatchRequest(
        purpose_code=EXISTENCE,
        items=[
            G.VerifyBatchItem(item_id=str(i), claim=G.ClaimedIdentity(resident_code=code))
            for i in range(ATTACK_BATCH)
        ],
    )

    async def attack() -> None:
        nonlocal verified, refusals
        while True:
            await attacking.wait()

            # One message at a time on one stream, the next sent when the
            # answer is in; a refusal ends the stream: wait as told, reopen.
            # (grpc.aio writes with call.write() when no iterator is given;
            # grpc-stubs knows only the iterator form.)
            call: Any = nenkin.VerifyBatch(timeout=60)  # type: ignore[call-arg]
            try:
                while attacking.is_set():
                    await call.write(message)
                    response = await call.read()
                    if response is EOF:
                        break
                    verified += len(response.results)
                await call.done_writing()
                assert await call.code() == grpc.StatusCode.OK
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                refusals += 1
                await asyncio.sleep(int(error_metadata(exc)["retry-after-ms"]) / 1000)

    async def measure(seconds: float) -> list[float]:
        samples = []
        request = G.VerifyRequest(purpose_code=PASSPORT, claim=claim_of(details))
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            start = time.perf_counter()
            answer = await mofa.Verify(request, timeout=TIMEOUT)
            samples.append(time.perf_counter() - start)
            assert answer.verification.found
        return samples

    attacker = asyncio.create_task(attack())
    idle: list[float] = []
    loaded: list[float] = []
    loaded_time = 0.0
    began = time.monotonic()
    try:
        await measure(0.5)  # warm the channel
        for _ in range(ROUNDS):
            attacking.clear()
            await asyncio.sleep(0.1)
            idle += await measure(PHASE_SECONDS)
            attacking.set()
            started = time.monotonic()
            loaded += await measure(PHASE_SECONDS)
            loaded_time += time.monotonic() - started
    finally:
        attacking.clear()
        total_time = time.monotonic() - began
        attacker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attacker

    # The pension service really was at its limit: refused, and answered at
    # least at about its rate while it ran, never more than its burst and
    # the rate over the whole test (the bucket fills while it is idle too).
    assert refusals > 0
    assert verified >= 0.5 * rate * loaded_time, (verified, loaded_time)
    assert verified <= existence.quota.burst + rate * total_time, (verified, total_time)
    assert len(idle) >= 50 and len(loaded) >= 50, (len(idle), len(loaded))
    idle_p50, loaded_p50 = statistics.median(idle), statistics.median(loaded)
    assert loaded_p50 <= 2 * idle_p50, (
        f"Verify p50 {loaded_p50 * 1000:.1f} ms with the other agency at its quota, "
        f"{idle_p50 * 1000:.1f} ms without"
    )


async def test_verify_batch_ends_unavailable_while_the_agency_is_still_sending(
    gw: Federation,
) -> None:
    """The national node stops; an agency streaming many messages gets UNAVAILABLE
    (the gateway reads its remaining messages before ending the call), not the
    INTERNAL its asyncio client reports for a call ended under its writes."""
    code = await register(gw, person("日南　五郎", birth_date="1950-05-05", sex=C.SEX_MALE))
    await gw.wait_delivered()
    nenkin = gw.agency(NENKIN)
    message = G.VerifyBatchRequest(
        purpose_code=EXISTENCE,
        items=[G.VerifyBatchItem(item_id="a", claim=G.ClaimedIdentity(resident_code=code))],
    )
    assert [len(r.results) for r in await batch_call(nenkin, [message])] == [1]
    assert gw.national is not None
    await gw.national.stop()

    sent = 0

    async def many() -> AsyncIterator[G.VerifyBatchRequest]:
        nonlocal sent
        for _ in range(40):
            sent += 1
            yield message
            await asyncio.sleep(0.01)

    for _ in range(3):
        sent = 0
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for _ in nenkin.VerifyBatch(many(), timeout=TIMEOUT):
                pass
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value
        assert sent == 40  # the agency finished sending before the status came
