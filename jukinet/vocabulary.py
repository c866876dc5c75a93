"""The words every tier shares about a person's record and its provision:
the person's fields (one definition, as a dataclass, as keyword arguments and
as table columns), the order in which an answer lists a record's fields, and
the operations and results of provisions with the labels they are stored and
counted under.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, TypeAlias, TypedDict

from sqlalchemy import Column, SmallInteger, String

from jukinet.v1 import common_pb2, gateway_pb2, provision_pb2


class PersonValues(TypedDict):
    """The person's fields as keyword arguments (of a proto message, a row, a dataclass)."""

    name: str
    name_kana: str
    former_surname: str
    alias: str
    birth_date: str
    sex: common_pb2.Sex.ValueType
    address: str


PERSON_FIELDS: tuple[str, ...] = tuple(PersonValues.__annotations__)
"""The person's fields, in the order every message and table lists them."""


class HasPerson(Protocol):
    """Anything that carries the person's fields (a proto message, a stored record)."""

    @property
    def name(self) -> str:
        """氏名, original characters."""

    @property
    def name_kana(self) -> str:
        """The reading, where known."""

    @property
    def former_surname(self) -> str:
        """旧氏, where registered."""

    @property
    def alias(self) -> str:
        """通称, where registered."""

    @property
    def birth_date(self) -> str:
        """YYYY-MM-DD."""

    @property
    def sex(self) -> common_pb2.Sex.ValueType:
        """Sex as registered."""

    @property
    def address(self) -> str:
        """The address of the register entry."""


def person_values(source: HasPerson) -> PersonValues:
    """The person's fields of ``source``, ready to pass on as keyword arguments."""
    return PersonValues(
        name=source.name,
        name_kana=source.name_kana,
        former_surname=source.former_surname,
        alias=source.alias,
        birth_date=source.birth_date,
        sex=source.sex,
        address=source.address,
    )


@dataclass(frozen=True)
class Person:
    """A person's identifying details (checked, where they come from an operator)."""

    name: str
    name_kana: str
    former_surname: str
    alias: str
    birth_date: str
    sex: common_pb2.Sex.ValueType
    address: str

    @classmethod
    def of(cls, source: HasPerson) -> Person:
        """The person ``source`` describes."""
        return cls(**person_values(source))


def person_columns() -> list[Column[object]]:
    """Fresh table columns for the person's fields (a column belongs to one table)."""
    return [
        Column("name", String(100), nullable=False),
        Column("name_kana", String(100), nullable=False),
        Column("former_surname", String(100), nullable=False),
        Column("alias", String(100), nullable=False),
        Column("birth_date", String(10), nullable=False),
        Column("sex", SmallInteger, nullable=False),
        Column("address", String(200), nullable=False),
    ]


# The fields of a stored record that an answer to an agency may carry, in the
# order answers list them (the order of ProvidedRecord): the identity-
# confirmation record and its status.
PROVIDABLE_FIELDS: tuple[str, ...] = (
    "resident_code",
    *PERSON_FIELDS,
    "local_government_code",
    "status",
)


def ordered(fields: set[str] | frozenset[str]) -> list[str]:
    """``fields`` (record field names) in the order answers list them."""
    return [f for f in PROVIDABLE_FIELDS if f in fields]


# -- provisions -----------------------------------------------------------------

OperationValue: TypeAlias = provision_pb2.ProvisionOperation.ValueType
ResultValue: TypeAlias = provision_pb2.ProvisionResult.ValueType

# The label of each operation, as the purpose registry names it and as
# provision records and metrics store it.
OPERATION_LABELS: dict[OperationValue, str] = {
    provision_pb2.PROVISION_OPERATION_VERIFY: "verify",
    provision_pb2.PROVISION_OPERATION_VERIFY_BATCH: "verify_batch",
    provision_pb2.PROVISION_OPERATION_RETRIEVE: "retrieve",
    provision_pb2.PROVISION_OPERATION_SEARCH: "search",
}
OPERATIONS_BY_LABEL: dict[str, OperationValue] = {v: k for k, v in OPERATION_LABELS.items()}

# The label of each result, as provision records and metrics store it.
RESULT_LABELS: dict[ResultValue, str] = {
    provision_pb2.PROVISION_RESULT_MATCH: "match",
    provision_pb2.PROVISION_RESULT_NO_MATCH: "no-match",
    provision_pb2.PROVISION_RESULT_PROVIDED: "provided",
    provision_pb2.PROVISION_RESULT_CANDIDATE: "candidate",
    provision_pb2.PROVISION_RESULT_NOT_FOUND: "not-found",
    provision_pb2.PROVISION_RESULT_DENIED: "denied",
}
RESULTS_BY_LABEL: dict[str, ResultValue] = {v: k for k, v in RESULT_LABELS.items()}


def operation_label(operation: OperationValue) -> str:
    """The stored label of ``operation``; empty for an unset or unknown value."""
    return OPERATION_LABELS.get(operation, "")


def operation_of(label: str) -> OperationValue:
    """The operation a stored label names; UNSPECIFIED for an unknown one."""
    return OPERATIONS_BY_LABEL.get(label, provision_pb2.PROVISION_OPERATION_UNSPECIFIED)


def result_label(result: ResultValue) -> str:
    """The stored label of ``result``; empty for an unset or unknown value."""
    return RESULT_LABELS.get(result, "")


def result_of(label: str) -> ResultValue:
    """The result a stored label names; UNSPECIFIED for an unknown one."""
    return RESULTS_BY_LABEL.get(label, provision_pb2.PROVISION_RESULT_UNSPECIFIED)


def verification_outcome(verification: gateway_pb2.Verification) -> ResultValue:
    """The provision result of one verification: not found, no match (some
    claimed item differs) or match."""
    if not verification.found:
        return provision_pb2.PROVISION_RESULT_NOT_FOUND
    items = (
        verification.resident_code,
        verification.name,
        verification.birth_date,
        verification.sex,
        verification.address,
    )
    if any(item == gateway_pb2.ITEM_MATCH_NO_MATCH for item in items):
        return provision_pb2.PROVISION_RESULT_NO_MATCH
    return provision_pb2.PROVISION_RESULT_MATCH
