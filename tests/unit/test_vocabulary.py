"""The shared vocabulary agrees with the wire and with itself."""

from __future__ import annotations

import dataclasses

from jukinet.delivery.rules import StoredIdentity
from jukinet.purposes import Operation
from jukinet.v1 import common_pb2, gateway_pb2, municipal_pb2, provision_pb2
from jukinet.vocabulary import (
    OPERATION_LABELS,
    PERSON_FIELDS,
    PROVIDABLE_FIELDS,
    RESULT_LABELS,
    Person,
    operation_label,
    operation_of,
    ordered,
    person_columns,
    person_values,
    result_label,
    result_of,
    verification_outcome,
)

M = gateway_pb2.ITEM_MATCH_MATCH
NO = gateway_pb2.ITEM_MATCH_NO_MATCH
UNCLAIMED = gateway_pb2.ITEM_MATCH_NOT_CLAIMED


def _field_names(message: type) -> list[str]:
    return [f.name for f in message.DESCRIPTOR.fields]  # type: ignore[attr-defined]


def test_person_fields_are_those_of_every_message_and_table() -> None:
    assert list(PERSON_FIELDS) == _field_names(municipal_pb2.PersonDetails)
    assert [f.name for f in dataclasses.fields(Person)] == list(PERSON_FIELDS)
    assert [c.name for c in person_columns()] == list(PERSON_FIELDS)
    record = _field_names(common_pb2.IdentityRecord)
    assert [f for f in record if f in PERSON_FIELDS] == list(PERSON_FIELDS)
    stored = [f.name for f in dataclasses.fields(StoredIdentity)]
    assert [f for f in stored if f in PERSON_FIELDS] == list(PERSON_FIELDS)


def test_providable_fields_are_the_provided_record_in_its_order() -> None:
    assert [*PROVIDABLE_FIELDS, "fields"] == _field_names(gateway_pb2.ProvidedRecord)
    assert ordered({"status", "name", "resident_code"}) == ["resident_code", "name", "status"]


def test_person_values_round_trip() -> None:
    details = municipal_pb2.PersonDetails(
        name="鳥取　花子",
        name_kana="トットリ　ハナコ",
        former_surname="米子",
        alias="",
        birth_date="1960-04-03",
        sex=common_pb2.SEX_FEMALE,
        address="鳥取県鳥取市東町1丁目220",
    )
    person = Person.of(details)
    assert municipal_pb2.PersonDetails(**person_values(person)) == details
    assert person.sex == common_pb2.SEX_FEMALE


def test_every_operation_and_result_has_one_label() -> None:
    operations = set(provision_pb2.ProvisionOperation.values())
    results = set(provision_pb2.ProvisionResult.values())
    assert set(OPERATION_LABELS) == operations - {provision_pb2.PROVISION_OPERATION_UNSPECIFIED}
    assert set(RESULT_LABELS) == results - {provision_pb2.PROVISION_RESULT_UNSPECIFIED}
    # The purpose registry names the same operations.
    assert set(OPERATION_LABELS.values()) == {op.value for op in Operation}
    for op in OPERATION_LABELS:
        assert operation_of(operation_label(op)) == op
    for result in RESULT_LABELS:
        assert result_of(result_label(result)) == result


def test_an_unknown_label_or_value_maps_to_unspecified_or_empty() -> None:
    assert operation_of("delete") == provision_pb2.PROVISION_OPERATION_UNSPECIFIED
    assert result_of("") == provision_pb2.PROVISION_RESULT_UNSPECIFIED
    assert operation_label(provision_pb2.PROVISION_OPERATION_UNSPECIFIED) == ""
    assert result_label(provision_pb2.PROVISION_RESULT_UNSPECIFIED) == ""


def test_verification_outcome() -> None:
    def v(found: bool = True, **items: gateway_pb2.ItemMatch.ValueType) -> gateway_pb2.Verification:
        out = gateway_pb2.Verification(found=found)
        for name, value in items.items():
            setattr(out, name, value)
        return out

    assert verification_outcome(v(found=False)) == provision_pb2.PROVISION_RESULT_NOT_FOUND
    assert verification_outcome(v(resident_code=M, name=M)) == provision_pb2.PROVISION_RESULT_MATCH
    assert (
        verification_outcome(v(resident_code=UNCLAIMED, name=M, birth_date=UNCLAIMED))
        == provision_pb2.PROVISION_RESULT_MATCH
    )
    for item in ("resident_code", "name", "birth_date", "sex", "address"):
        no_match = v(name=M)
        setattr(no_match, item, NO)
        assert verification_outcome(no_match) == provision_pb2.PROVISION_RESULT_NO_MATCH
