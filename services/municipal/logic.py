"""Rules of the municipal register that need no I/O: checking what an operator
entered, and turning a register change into its notification."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import TypeAlias

from jukinet.errors import BeforeRegistration, FailedPrecondition, InvalidArgument
from jukinet.movecert import check_fits
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2, municipal_pb2, relay_pb2
from jukinet.validation import (
    MAX_ADDRESS,
    REASON_KIND,
    check_address,
    check_birth_date,
    check_kana,
    check_name,
    check_sex,
    check_text,
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


RelationshipValue: TypeAlias = municipal_pb2.Relationship.ValueType
UNRECORDED = municipal_pb2.RELATIONSHIP_UNSPECIFIED
HEAD = municipal_pb2.RELATIONSHIP_HEAD

RELATIONSHIP_LABELS: dict[RelationshipValue, str] = {
    municipal_pb2.RELATIONSHIP_UNSPECIFIED: "",
    municipal_pb2.RELATIONSHIP_HEAD: "世帯主",
    municipal_pb2.RELATIONSHIP_WIFE: "妻",
    municipal_pb2.RELATIONSHIP_HUSBAND: "夫",
    municipal_pb2.RELATIONSHIP_UNREGISTERED_WIFE: "妻（未届）",
    municipal_pb2.RELATIONSHIP_UNREGISTERED_HUSBAND: "夫（未届）",
    municipal_pb2.RELATIONSHIP_CHILD: "子",
    municipal_pb2.RELATIONSHIP_CHILDS_WIFE: "子の妻",
    municipal_pb2.RELATIONSHIP_CHILDS_HUSBAND: "子の夫",
    municipal_pb2.RELATIONSHIP_GRANDCHILD: "孫",
    municipal_pb2.RELATIONSHIP_FATHER: "父",
    municipal_pb2.RELATIONSHIP_MOTHER: "母",
    municipal_pb2.RELATIONSHIP_GRANDFATHER: "祖父",
    municipal_pb2.RELATIONSHIP_GRANDMOTHER: "祖母",
    municipal_pb2.RELATIONSHIP_ELDER_BROTHER: "兄",
    municipal_pb2.RELATIONSHIP_ELDER_SISTER: "姉",
    municipal_pb2.RELATIONSHIP_YOUNGER_BROTHER: "弟",
    municipal_pb2.RELATIONSHIP_YOUNGER_SISTER: "妹",
    municipal_pb2.RELATIONSHIP_RELATIVE: "縁故者",
    municipal_pb2.RELATIONSHIP_LODGER: "同居人",
}
"""The relationship to the head (続柄) as the register writes it; the unit test
checks that every value of the enum has its label."""


def check_relationship(value: int, field: str) -> RelationshipValue:
    """A relationship of the closed vocabulary (unset allowed: not recorded)."""
    if value not in RELATIONSHIP_LABELS:
        raise InvalidArgument(field, f"unknown relationship value {value}")
    return municipal_pb2.Relationship.ValueType(value)


@dataclass(frozen=True)
class Register:
    """The items of an entry that never leave the municipal node."""

    relationship: RelationshipValue = UNRECORDED
    previous_address: str = ""
    domicile: str = ""
    domicile_head: str = ""

    def to_proto(self) -> municipal_pb2.RegisterItems:
        """The items as the wire carries them."""
        return municipal_pb2.RegisterItems(
            relationship=self.relationship,
            previous_address=self.previous_address,
            domicile=self.domicile,
            domicile_head=self.domicile_head,
        )


def check_domicile(domicile: str, head: str, prefix: str = "") -> tuple[str, str]:
    """A registered domicile (本籍) and the head of its family register (筆頭者),
    both optional, the head only with a domicile."""
    domicile = check_text(domicile, f"{prefix}domicile", MAX_ADDRESS, required=False)
    head = check_name(head, f"{prefix}domicile_head", required=False)
    if head and not domicile:
        raise InvalidArgument(f"{prefix}domicile_head", "given without a domicile")
    return domicile, head


def check_register(
    items: municipal_pb2.RegisterItems,
    prefix: str = "register",
    *,
    previous_address: bool = True,
    default_previous: str = "",
) -> Register:
    """The register-only items an operator enters with a new entry; a birth
    has no previous address (``previous_address`` False)."""
    relationship = check_relationship(items.relationship, f"{prefix}.relationship")
    previous = check_text(
        items.previous_address, f"{prefix}.previous_address", MAX_ADDRESS, required=False
    )
    if previous and not previous_address:
        raise InvalidArgument(f"{prefix}.previous_address", "not for a birth")
    domicile, head = check_domicile(items.domicile, items.domicile_head, f"{prefix}.")
    return Register(relationship, previous or default_previous, domicile, head)


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
    register: Register = dataclass_field(default_factory=Register)
    entry_reason: common_pb2.ChangeReason.ValueType = common_pb2.CHANGE_REASON_UNSPECIFIED

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
            register=self.register.to_proto(),
            entry_reason=self.entry_reason,
        )

    def fields(self) -> dict[str, str]:
        """The entry's fields as text, as a change event compares them."""
        out: dict[str, str] = {"resident_code": self.resident_code}
        out.update({n: str(v) for n, v in person_values(self.person).items()})
        out["sex"] = common_pb2.Sex.Name(self.person.sex)
        out.update(
            household_id=self.household_id,
            status=municipal_pb2.ResidentStatus.Name(self.status),
            registered_on=self.registered_on,
            removed_on=self.removed_on,
            **{
                "register.relationship": RELATIONSHIP_LABELS[self.register.relationship],
                "register.previous_address": self.register.previous_address,
                "register.domicile": self.register.domicile,
                "register.domicile_head": self.register.domicile_head,
            },
        )
        return out


def changed_fields(before: ResidentState | None, after: ResidentState) -> str:
    """The fields ``after`` changed from ``before`` (nothing: a new entry), as
    the JSON an event stores: a list of {field, before, after}."""
    old = before.fields() if before is not None else {}
    new = after.fields()
    return json.dumps(
        [
            {"field": f, "before": old.get(f, ""), "after": v}
            for f, v in new.items()
            if old.get(f, "") != v
        ],
        ensure_ascii=False,
    )


def event_changes(stored: str) -> list[municipal_pb2.FieldChange]:
    """The changes of a stored event, as the wire carries them."""
    return [municipal_pb2.FieldChange(**c) for c in json.loads(stored)]


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


# -- the move-out made final (転出確定) ------------------------------------------

MOVE_IN_PERIOD = dt.timedelta(days=14)
"""How long after the planned move-out date the new municipality's move-in notice
may take before the move-out counts as unconfirmed (assumed: 住民基本台帳法 第22条
gives 14 days to file the move-in after moving, counted here from the planned
move-out date the certificate names)."""


def overdue_since(planned: str) -> dt.date:
    """The first day a move-out planned for ``planned`` is past the statutory period."""
    return dt.date.fromisoformat(planned) + MOVE_IN_PERIOD + dt.timedelta(days=1)


def check_notice_fits(
    notice_code: str, issued_code: str, destination: str, source: str, number: str
) -> None:
    """A move-in notice from ``source`` fits a certificate issued here for ``issued_code``
    towards ``destination``; :class:`FailedPrecondition` (``move-in-notice-mismatch``)
    otherwise."""
    if notice_code != issued_code:
        raise FailedPrecondition(
            f"certificate {number} was issued for another resident code",
            reason=Reason.MOVE_IN_NOTICE_MISMATCH,
        )
    if destination != source:
        raise FailedPrecondition(
            f"certificate {number} names another destination than {source}",
            reason=Reason.MOVE_IN_NOTICE_MISMATCH,
        )


def copy_entry(
    resident: ResidentState, *, relationship: bool, resident_code: bool
) -> relay_pb2.CopyEntry:
    """A resident's entry as a copy of the record shows it (広域交付): never the
    domicile (本籍) nor its head (筆頭者); the relationship (続柄) and the resident
    code only when specially asked."""
    p = resident.person
    return relay_pb2.CopyEntry(
        name=p.name,
        name_kana=p.name_kana,
        birth_date=p.birth_date,
        sex=p.sex,
        address=p.address,
        registered_on=resident.registered_on,
        relationship=RELATIONSHIP_LABELS[resident.register.relationship] if relationship else "",
        resident_code=resident.resident_code if resident_code else "",
        previous_address=resident.register.previous_address,
        former_surname=p.former_surname,
        alias=p.alias,
    )
