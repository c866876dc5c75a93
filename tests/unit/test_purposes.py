"""The statutory purpose registry: deny by default, and a strict start-up check."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from jukinet.errors import ConfigError, PermissionDenied
from jukinet.purposes import (
    RECORD_FIELDS,
    Operation,
    Purpose,
    PurposeDenied,
    PurposeRegistry,
    allowed_fields,
    load_registry,
)
from jukinet.reasons import Reason

# The policy, written out independently of the TOML file so that widening any
# purpose (another agency, operation or field) fails here and gets reviewed.
# code: (agencies, operations, fields)
EXPECTED: dict[str, tuple[set[str], set[str], set[str]]] = {
    "MOFA-PASSPORT-ISSUE": (
        {"mofa-passport"},
        {"verify", "retrieve", "search"},
        {"name", "birth_date", "sex", "address"},
    ),
    "NENKIN-EXISTENCE-CHECK": ({"nenkin"}, {"verify", "verify_batch"}, {"status"}),
    "NENKIN-ADDRESS-CHANGE": ({"nenkin"}, {"verify", "retrieve"}, {"address"}),
    "SOUMU-ONKYU-EXISTENCE-CHECK": ({"soumu-onkyu"}, {"verify", "verify_batch"}, {"status"}),
    "KKR-PENSION-EXISTENCE-CHECK": ({"kkr"}, {"verify", "verify_batch"}, {"status"}),
    "MHLW-ENGO-PENSION": ({"mhlw-engo"}, {"verify", "verify_batch"}, {"status"}),
    "SOUMU-RADIO-OPERATOR-LICENCE": ({"soumu-radio"}, {"verify"}, set()),
    "MLIT-CONSTRUCTION-ENGINEER-TEST": ({"mlit-construction"}, {"verify"}, set()),
}
ALL_AGENCIES = sorted(set().union(*(agencies for agencies, _, _ in EXPECTED.values())))


@pytest.fixture(scope="module")
def registry() -> PurposeRegistry:
    """The shipped purpose registry."""
    return load_registry()


def _denial(
    registry: PurposeRegistry,
    agency: str,
    purpose: str,
    operation: str,
    fields: tuple[str, ...] = (),
) -> PurposeDenied:
    with pytest.raises(PurposeDenied) as info:
        registry.authorize(agency, purpose, operation, fields)
    return info.value


# --- the packaged registry ---------------------------------------------------------


def test_packaged_registry_loads_with_exactly_the_expected_purposes(
    registry: PurposeRegistry,
) -> None:
    assert {purpose.code for purpose in registry} == set(EXPECTED)
    assert len(registry) == len(EXPECTED)
    for purpose in registry:
        agencies, operations, fields = EXPECTED[purpose.code]
        assert purpose.agencies == agencies, purpose.code
        assert purpose.operations == operations, purpose.code
        assert purpose.fields == fields, purpose.code
        assert allowed_fields(purpose) == frozenset(fields)
        assert purpose.statute.ja and purpose.statute.en
        assert purpose.task.ja and purpose.task.en


def test_quotas_match_the_operations(registry: PurposeRegistry) -> None:
    for purpose in registry:
        quota = purpose.quota
        assert quota.requests_per_second > 0
        assert quota.burst >= 1
        assert (quota.max_batch_size is not None) == (Operation.VERIFY_BATCH in purpose.operations)
        assert (quota.max_search_candidates is not None) == (Operation.SEARCH in purpose.operations)


def test_get(registry: PurposeRegistry) -> None:
    purpose = registry.get("NENKIN-EXISTENCE-CHECK")
    assert isinstance(purpose, Purpose)
    assert purpose.code == "NENKIN-EXISTENCE-CHECK"
    assert registry.get("NO-SUCH-PURPOSE") is None
    assert registry.get("nenkin-existence-check") is None


def test_purposes_are_frozen(registry: PurposeRegistry) -> None:
    purpose = registry.get("MOFA-PASSPORT-ISSUE")
    assert purpose is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        purpose.fields = frozenset(RECORD_FIELDS)  # type: ignore[misc]


def test_existence_checks_learn_at_most_the_status(registry: PurposeRegistry) -> None:
    for purpose in registry:
        if "EXISTENCE-CHECK" in purpose.code:
            assert purpose.fields <= {"status"}
            assert Operation.RETRIEVE not in purpose.operations
            assert Operation.SEARCH not in purpose.operations


# --- authorize -----------------------------------------------------------------------


@pytest.mark.parametrize("code", sorted(EXPECTED))
@pytest.mark.parametrize("operation", [op.value for op in Operation])
def test_operation_allowed_iff_listed(registry: PurposeRegistry, code: str, operation: str) -> None:
    agencies, operations, _ = EXPECTED[code]
    for agency in sorted(agencies):
        if operation in operations:
            assert registry.authorize(agency, code, operation).code == code
        else:
            denial = _denial(registry, agency, code, operation)
            assert denial.reason == Reason.OPERATION_NOT_ALLOWED
            assert denial.operation == operation


def test_denial_names_the_operation_plainly(registry: PurposeRegistry) -> None:
    denial = _denial(registry, "nenkin", "NENKIN-EXISTENCE-CHECK", Operation.RETRIEVE)
    assert str(denial).endswith("does not allow operation 'retrieve'"), str(denial)


@pytest.mark.parametrize("operation", ["", "VERIFY", "delete", "verify ", "retrieve_all"])
def test_unknown_operation_is_not_allowed(registry: PurposeRegistry, operation: str) -> None:
    denial = _denial(registry, "mofa-passport", "MOFA-PASSPORT-ISSUE", operation)
    assert denial.reason == Reason.OPERATION_NOT_ALLOWED


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_wrong_agency_is_not_allowed(registry: PurposeRegistry, code: str) -> None:
    agencies, operations, _ = EXPECTED[code]
    others = [a for a in ALL_AGENCIES if a not in agencies] + ["nta", "", "NENKIN", "gateway"]
    for agency in others:
        for operation in sorted(operations):
            denial = _denial(registry, agency, code, operation)
            assert denial.reason == Reason.AGENCY_NOT_ALLOWED, (agency, code, operation)
            assert denial.agency_code == agency


def test_wrong_agency_is_refused_before_operation_and_fields(registry: PurposeRegistry) -> None:
    # Another agency learns nothing about what the purpose allows.
    denial = _denial(registry, "mofa-passport", "NENKIN-EXISTENCE-CHECK", "search", ("name",))
    assert denial.reason == Reason.AGENCY_NOT_ALLOWED


@pytest.mark.parametrize(
    "purpose_code",
    ["NO-SUCH-PURPOSE", "", "mofa-passport-issue", " MOFA-PASSPORT-ISSUE", "MOFA-PASSPORT"],
)
def test_unknown_purpose(registry: PurposeRegistry, purpose_code: str) -> None:
    denial = _denial(registry, "mofa-passport", purpose_code, "verify")
    assert denial.reason == Reason.UNKNOWN_PURPOSE
    assert denial.purpose_code == purpose_code


@pytest.mark.parametrize("code", sorted(EXPECTED))
def test_field_outside_the_purpose_is_not_allowed(registry: PurposeRegistry, code: str) -> None:
    agencies, operations, fields = EXPECTED[code]
    agency = min(agencies)
    operation = min(operations)
    assert registry.authorize(agency, code, operation, sorted(fields)).code == code
    assert registry.authorize(agency, code, operation).code == code
    for field in [*sorted(RECORD_FIELDS - fields), "domicile", "household", ""]:
        denial = _denial(registry, agency, code, operation, (*sorted(fields), field))
        assert denial.reason == Reason.FIELD_NOT_ALLOWED, (code, field)
        assert field in denial.fields


def test_denial_is_a_permission_denied_with_a_reason_trailer(registry: PurposeRegistry) -> None:
    denial = _denial(registry, "nenkin", "NENKIN-ADDRESS-CHANGE", "retrieve", ("name",))
    assert isinstance(denial, PermissionDenied)
    assert denial.code is grpc.StatusCode.PERMISSION_DENIED
    assert ("jukinet-reason", Reason.FIELD_NOT_ALLOWED) in denial.metadata()
    assert "'name'" in denial.message


def test_long_caller_values_are_cut_short_in_messages(registry: PurposeRegistry) -> None:
    denial = _denial(registry, "nenkin", "X" * 10_000, "verify")
    assert len(denial.message) < 200


def test_fields_as_a_lone_string_is_a_programming_error(registry: PurposeRegistry) -> None:
    with pytest.raises(TypeError):
        registry.authorize("nenkin", "NENKIN-ADDRESS-CHANGE", "retrieve", "address")


# --- start-up errors ---------------------------------------------------------------

BASE: dict[str, str] = {
    "code": '"TEST-PURPOSE"',
    "statute": '{ ja = "テスト法", en = "Test Act" }',
    "task": '{ ja = "テストに関する事務", en = "Testing" }',
    "agencies": '["nenkin"]',
    "operations": '["verify", "verify_batch"]',
    "fields": '["status"]',
    "quota": "{ requests_per_second = 5, burst = 100, max_batch_size = 100 }",
}


def entry(**overrides: str | None) -> str:
    """One [[purpose]] in TOML: BASE with values replaced, or removed where None."""
    values = {**BASE, **overrides}
    lines = [f"{key} = {value}" for key, value in values.items() if value is not None]
    return "[[purpose]]\n" + "\n".join(lines) + "\n"


NENKIN = (
    '[[agency]]\ncode = "nenkin"\nname = { ja = "日本年金機構", en = "Japan Pension Service" }\n'
)


def write(tmp_path: Path, text: str, *, agencies: str = NENKIN) -> Path:
    """The registry ``text`` in a file, followed by the ``agencies`` entries."""
    path = tmp_path / "purposes.toml"
    path.write_text(text + agencies, encoding="utf-8")
    return path


def test_a_valid_file_loads(tmp_path: Path) -> None:
    text = entry() + entry(
        code='"TEST-SEARCH"',
        operations='["search"]',
        fields='["name", "address"]',
        quota="{ requests_per_second = 0.5, burst = 1, max_search_candidates = 3 }",
    )
    registry = load_registry(write(tmp_path, text))
    assert len(registry) == 2
    purpose = registry.authorize("nenkin", "TEST-SEARCH", "search", ["name"])
    assert purpose.quota.requests_per_second == 0.5
    assert purpose.quota.max_search_candidates == 3
    assert purpose.quota.max_batch_size is None


P1 = "purpose #1 (TEST-PURPOSE)"

STARTUP_ERRORS: list[tuple[str, str, list[str]]] = [
    # (test id, file text, substrings the one-line message must contain)
    ("unknown-field", entry(fields='["status", "domicile"]'), [P1, "unknown field 'domicile'"]),
    (
        "unknown-operation",
        entry(operations='["verify", "delete"]'),
        [P1, "unknown operation 'delete'"],
    ),
    (
        "operation-case",
        entry(operations='["Verify"]', quota="{ requests_per_second = 1, burst = 1 }"),
        [P1, "unknown operation 'Verify'"],
    ),
    (
        "duplicate-code",
        entry() + entry(agencies='["mofa-passport"]'),
        ["purpose #2 (TEST-PURPOSE)", "duplicate purpose code 'TEST-PURPOSE'", "purpose #1"],
    ),
    ("agency-upper-case", entry(agencies='["NENKIN"]'), [P1, "agency 'NENKIN'", "not a valid"]),
    ("agency-too-short", entry(agencies='["a"]'), [P1, "agency 'a'", "not a valid"]),
    ("agency-too-long", entry(agencies=f'["{"a" * 33}"]'), [P1, "not a valid agency"]),
    ("agency-slash", entry(agencies='["mofa/passport"]'), [P1, "'mofa/passport'", "not a valid"]),
    ("agency-space", entry(agencies='["mofa passport"]'), [P1, "not a valid agency"]),
    ("agency-uri", entry(agencies='["jukinet://agency/mofa"]'), [P1, "not a valid agency"]),
    ("agency-empty-string", entry(agencies='[""]'), [P1, "agency ''", "not a valid"]),
    ("agency-full-width", entry(agencies='["ｎｅｎｋｉｎ"]'), [P1, "not a valid agency"]),
    ("agencies-empty", entry(agencies="[]"), [P1, "agencies is empty"]),
    ("agencies-not-list", entry(agencies='"nenkin"'), [P1, "agencies must be a list"]),
    ("agency-twice", entry(agencies='["nenkin", "nenkin"]'), [P1, "'nenkin' twice"]),
    ("operations-empty", entry(operations="[]"), [P1, "operations is empty"]),
    ("field-twice", entry(fields='["status", "status"]'), [P1, "'status' twice"]),
    ("missing-statute", entry(statute=None), [P1, "missing statute"]),
    ("missing-task", entry(task=None), [P1, "missing task"]),
    ("missing-statute-en", entry(statute='{ ja = "テスト法" }'), [P1, "missing statute.en"]),
    ("empty-task-ja", entry(task='{ ja = " ", en = "Testing" }'), [P1, "missing task.ja"]),
    ("statute-not-table", entry(statute='"テスト法"'), [P1, "statute must be a table"]),
    ("missing-code", entry(code=None), ["purpose #1:", "missing code"]),
    ("lower-case-code", entry(code='"test-purpose"'), ["purpose #1:", "'test-purpose'"]),
    ("code-not-string", entry(code="7"), ["purpose #1:", "purpose code 7"]),
    ("missing-agencies", entry(agencies=None), [P1, "missing agencies"]),
    ("missing-fields", entry(fields=None), [P1, "missing fields"]),
    ("missing-quota", entry(quota=None), [P1, "missing quota"]),
    (
        "burst-below-batch",
        entry(quota="{ requests_per_second = 5, burst = 99, max_batch_size = 100 }"),
        [P1, "quota.burst (99) must be at least quota.max_batch_size (100)"],
    ),
    (
        "zero-rate",
        entry(quota="{ requests_per_second = 0, burst = 10, max_batch_size = 100 }"),
        [P1, "quota.requests_per_second must be positive"],
    ),
    (
        "negative-rate",
        entry(quota="{ requests_per_second = -1.5, burst = 10, max_batch_size = 100 }"),
        [P1, "quota.requests_per_second must be positive"],
    ),
    (
        "infinite-rate",
        entry(quota="{ requests_per_second = inf, burst = 10, max_batch_size = 100 }"),
        [P1, "quota.requests_per_second must be positive and finite"],
    ),
    (
        "nan-rate",
        entry(quota="{ requests_per_second = nan, burst = 10, max_batch_size = 100 }"),
        [P1, "quota.requests_per_second must be positive and finite"],
    ),
    (
        "string-rate",
        entry(quota='{ requests_per_second = "5", burst = 10, max_batch_size = 100 }'),
        [P1, "quota.requests_per_second must be a number"],
    ),
    (
        "zero-burst",
        entry(quota="{ requests_per_second = 5, burst = 0, max_batch_size = 100 }"),
        [P1, "quota.burst must be positive"],
    ),
    (
        "fractional-burst",
        entry(quota="{ requests_per_second = 5, burst = 2.5, max_batch_size = 100 }"),
        [P1, "quota.burst must be an integer"],
    ),
    (
        "zero-batch",
        entry(quota="{ requests_per_second = 5, burst = 10, max_batch_size = 0 }"),
        [P1, "quota.max_batch_size must be positive"],
    ),
    (
        "negative-candidates",
        entry(
            operations='["search"]',
            quota="{ requests_per_second = 5, burst = 10, max_search_candidates = -3 }",
        ),
        [P1, "quota.max_search_candidates must be positive"],
    ),
    (
        "missing-rate",
        entry(quota="{ burst = 10, max_batch_size = 100 }"),
        [P1, "missing quota.requests_per_second"],
    ),
    (
        "missing-batch-size",
        entry(quota="{ requests_per_second = 5, burst = 10 }"),
        [P1, "missing quota.max_batch_size", "verify_batch"],
    ),
    (
        "batch-size-without-batch",
        entry(operations='["verify"]'),
        [P1, "quota.max_batch_size is set but verify_batch is not allowed"],
    ),
    (
        "candidates-without-search",
        entry(
            quota="{ requests_per_second = 5, burst = 10, max_batch_size = 100, "
            "max_search_candidates = 5 }"
        ),
        [P1, "quota.max_search_candidates is set but search is not allowed"],
    ),
    ("unknown-key-in-purpose", entry(row="12"), [P1, "unknown key(s) 'row'"]),
    (
        "unknown-key-in-quota",
        entry(quota="{ requests_per_second = 5, burst = 10, max_batch_size = 100, per_day = 9 }"),
        [P1, "unknown key(s) 'per_day' in quota"],
    ),
    (
        "unknown-key-in-statute",
        entry(statute='{ ja = "テスト法", en = "Test Act", de = "Testgesetz" }'),
        [P1, "unknown key(s) 'de' in statute"],
    ),
    ("unknown-top-level-key", "version = 1\n" + entry(), ["unknown top-level key(s) 'version'"]),
    ("no-purposes", "", ["no [[purpose]] entries"]),
    ("purpose-not-array", 'purpose = "x"\n', ["array of tables"]),
    ("invalid-toml", entry() + "fields = [\n", ["invalid TOML"]),
]


AGENCY_ERRORS = [
    ("agency-without-entry", "", [P1, "agency 'nenkin' has no [[agency]] entry"]),
    (
        "duplicate-agency",
        NENKIN + NENKIN,
        ["agency #2 (nenkin)", "duplicate agency code 'nenkin', first defined in agency #1"],
    ),
    (
        "agency-unknown-key",
        NENKIN + "url = 'https://www.nenkin.go.jp/'\n",
        ["agency #1", "unknown key(s) 'url'"],
    ),
    ("agency-missing-name", '[[agency]]\ncode = "nenkin"\n', ["agency #1", "missing name"]),
    (
        "agency-bad-code",
        '[[agency]]\ncode = "Nenkin"\nname = { ja = "x", en = "y" }\n',
        ["agency #1", "'Nenkin' is not a valid agency certificate identity"],
    ),
    (
        "agency-name-without-en",
        '[[agency]]\ncode = "nenkin"\nname = { ja = "日本年金機構" }\n',
        ["agency #1 (nenkin)", "missing name.en"],
    ),
]


@pytest.mark.parametrize(
    ("agencies", "expected"),
    [pytest.param(text, expected, id=name) for name, text, expected in AGENCY_ERRORS],
)
def test_agency_entries_are_checked(tmp_path: Path, agencies: str, expected: list[str]) -> None:
    path = write(tmp_path, entry(), agencies=agencies)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, message


def test_agency_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = write(tmp_path, 'agency = "nenkin"\n' + entry(), agencies="")
    with pytest.raises(ConfigError, match=r"array of tables \(\[\[agency\]\]\)"):
        load_registry(path)


def test_every_packaged_agency_has_a_name(registry: PurposeRegistry) -> None:
    for purpose in registry:
        for code in purpose.agencies:
            agency = registry.agency(code)
            assert agency is not None, code
            assert agency.name.ja and agency.name.en
    assert registry.agency("nenkin").name.ja == "日本年金機構"  # type: ignore[union-attr]
    assert registry.agency("nta") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [pytest.param(text, expected, id=name) for name, text, expected in STARTUP_ERRORS],
)
def test_startup_error_names_the_problem(tmp_path: Path, text: str, expected: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_registry(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    for part in expected:
        assert part in message, message


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read the purpose registry"):
        load_registry(path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "purposes.toml"
    path.write_bytes(entry().encode("shift_jis"))
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_registry(path)


def test_registry_refuses_duplicate_purposes() -> None:
    purpose = load_registry().get("MOFA-PASSPORT-ISSUE")
    assert purpose is not None
    with pytest.raises(ConfigError, match="duplicate purpose code"):
        PurposeRegistry([purpose, purpose])
