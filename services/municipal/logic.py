"""Rules of the municipal register that need no I/O: checking what an operator
entered, and turning a register change into its notification."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from jukinet.errors import BeforeRegistration, FailedPrecondition, InvalidArgument
from jukinet.movecert import check_fits
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, municipal_pb2
from jukinet.validation import (
    REASON_KIND,
    check_address,
    check_birth_date,
    check_kana,
    check_name,
    check_sex,
)
from jukinet.vocabulary import PERSON_FIELDS, Person, person_values

ACTIVE = municipal_pb2.RESIDENT_STATUS_ACTIVE
REMOVED = municipal_pb2.RESIDENT_STATUS_REMOVED


def check_person(
    p: municipal_pb2.PersonDetails, municipality: str, prefix: str = "person"
) -> Person:
    """Every field an operator enters for a person living in ``municipality``."""
    return Person(
        name=check_name(p.name, f"{prefix}.name"),
        name_kana=check_kana(p.name_kana, f"{prefix}.name_kana"),
        former_surname=check_name(p.former_surname, f"{prefix}.former_surname", required=False),
        alias=check_name(p.alias, f"{prefix}.alias", required=False),
        birth_date=check_birth_date(p.birth_date, f"{prefix}.birth_date").isoformat(),
        sex=check_sex(p.sex, f"{prefix}.sex"),
        address=check_address(p.address, f"{prefix}.address", municipality),
    )


IDENTITY_FIELDS: tuple[str, ...] = tuple(f for f in PERSON_FIELDS if f != "address")
"""The identity items a move-out certificate carries to the new municipality."""


def move_in_person(
    cert: common_pb2.MoveOutCertificate, details: municipal_pb2.PersonDetails, municipality: str
) -> Person:
    """The person a domestic move-in registers: the certificate's identity items
    and the new address the operator entered. An identity item the operator
    left empty is the certificate's; one they entered must equal it (after the
    usual checks, so that a hiragana reading compares as katakana)."""
    merged = municipal_pb2.PersonDetails()
    merged.CopyFrom(details)
    for field in IDENTITY_FIELDS:
        if not getattr(details, field):
            setattr(merged, field, getattr(cert, field))
    person = check_person(merged, municipality)
    check_fits(
        cert,
        resident_code=cert.resident_code,
        previous=cert.issuing_local_government_code,
        destination=municipality,
        person=person,
    )
    return person


def check_not_before_birth(date: str, person: Person, field: str) -> None:
    """A register date of a person (entry, removal, death) cannot precede their birth."""
    # ISO dates compare correctly as text.
    if date < person.birth_date:
        raise InvalidArgument(field, f"{date} is before the person's birth date")


def check_dated_change(date: str, resident: ResidentState, field: str = "effective_date") -> None:
    """A change of a registered resident cannot precede their birth or the day
    their current registration began (the register's history starts there)."""
    check_not_before_birth(date, resident.person, field)
    if date < resident.registered_on:
        raise BeforeRegistration(
            field, f"{date} is before the current registration began on {resident.registered_on}"
        )


def check_return(date: str, previous: ResidentState, field: str = "effective_date") -> None:
    """A move back into a municipality cannot precede the removal it follows."""
    if previous.removed_on and date < previous.removed_on:
        raise BeforeRegistration(
            field, f"{date} is before the resident's removal here on {previous.removed_on}"
        )


def check_amended_birth(person: Person, resident: ResidentState, field: str) -> None:
    """A corrected birth date cannot fall after the day the registration began."""
    if person.birth_date > resident.registered_on:
        raise BeforeRegistration(
            field,
            f"{person.birth_date} is after the current registration began on "
            f"{resident.registered_on}",
        )


@dataclass(frozen=True)
class ResidentState:
    """A register entry as stored."""

    id: int
    resident_code: str
    person: Person
    household_id: str
    status: municipal_pb2.ResidentStatus.ValueType
    registered_on: str
    removed_on: str
    last_reason: common_pb2.ChangeReason.ValueType

    def require_active(self) -> None:
        """Refuse an operation on a resident no longer registered here."""
        if self.status != ACTIVE:
            raise FailedPrecondition(
                f"resident {self.resident_code} is not currently registered here",
                reason=Reason.NOT_REGISTERED,
            )

    def to_proto(self, local_government_code: str) -> municipal_pb2.Resident:
        """The entry as the wire carries it."""
        return municipal_pb2.Resident(
            resident_code=self.resident_code,
            person=municipal_pb2.PersonDetails(**person_values(self.person)),
            household_id=self.household_id,
            status=self.status,
            registered_on=self.registered_on,
            removed_on=self.removed_on,
            last_reason=self.last_reason,
            local_government_code=local_government_code,
        )


@dataclass(frozen=True)
class Change:
    """One register change to announce: who (as it stands after), why, when."""

    resident_code: str
    person: Person
    reason: common_pb2.ChangeReason.ValueType
    effective_date: str
    previous_resident_code: str = ""
    certificate: common_pb2.SignedMoveOutCertificate | None = None
    """The move-out certificate a domestic move-in rests on, carried as signed."""


def build_notification(
    origin: str, sequence: int, change: Change, recorded_at: dt.datetime
) -> common_pb2.Notification:
    """The notification for ``change``, numbered ``sequence``."""
    return common_pb2.Notification(
        origin_code=origin,
        sequence=sequence,
        kind=REASON_KIND[change.reason],
        reason=change.reason,
        effective_date=change.effective_date,
        recorded_at=recorded_at.isoformat(),
        record=common_pb2.IdentityRecord(
            resident_code=change.resident_code,
            **person_values(change.person),
            local_government_code=origin,
        ),
        previous_resident_code=change.previous_resident_code,
        move_out_certificate=change.certificate,
    )


MOVE_IN_REASON: dict[municipal_pb2.MoveInOrigin.ValueType, common_pb2.ChangeReason.ValueType] = {
    municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC: common_pb2.CHANGE_REASON_MOVE_IN,
    municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC_SPECIAL: common_pb2.CHANGE_REASON_SPECIAL_MOVE_IN,
    municipal_pb2.MOVE_IN_ORIGIN_ABROAD: common_pb2.CHANGE_REASON_MOVE_IN_FROM_ABROAD,
}

REMOVAL_REASON: dict[municipal_pb2.RemovalGround.ValueType, common_pb2.ChangeReason.ValueType] = {
    municipal_pb2.REMOVAL_GROUND_EX_OFFICIO: common_pb2.CHANGE_REASON_EX_OFFICIO_REMOVAL,
    municipal_pb2.REMOVAL_GROUND_DECLARED_MISSING: common_pb2.CHANGE_REASON_DECLARED_MISSING,
}


def move_in_reason(
    origin: municipal_pb2.MoveInOrigin.ValueType,
) -> common_pb2.ChangeReason.ValueType:
    """The change reason of a move-in from ``origin``."""
    try:
        return MOVE_IN_REASON[origin]
    except KeyError:
        raise InvalidArgument("origin", f"unknown or unset value {origin}") from None


def removal_reason(
    ground: municipal_pb2.RemovalGround.ValueType,
) -> common_pb2.ChangeReason.ValueType:
    """The change reason of a removal on ``ground``."""
    try:
        return REMOVAL_REASON[ground]
    except KeyError:
        raise InvalidArgument("ground", f"unknown or unset value {ground}") from None
