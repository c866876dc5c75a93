"""Identity URIs: every valid shape round-trips, everything else is refused."""

from __future__ import annotations

import pytest

from jukinet.identity import Identity, Kind, parse_identity_uri


@pytest.mark.parametrize(
    ("uri", "identity"),
    [
        ("jukinet://municipality/312011", Identity(Kind.MUNICIPALITY, "312011")),
        ("jukinet://municipality/131016", Identity.municipality("131016")),
        ("jukinet://prefecture/31", Identity.prefecture("31")),
        ("jukinet://prefecture/01", Identity.prefecture("01")),
        ("jukinet://prefecture/47", Identity.prefecture("47")),
        ("jukinet://national", Identity.national()),
        ("jukinet://gateway", Identity.gateway()),
        ("jukinet://agency/nta", Identity.agency("nta")),
        ("jukinet://agency/mhlw-pension", Identity.agency("mhlw-pension")),
        ("jukinet://operator/312011/admin", Identity.operator("312011", "admin")),
        ("jukinet://operator/31/t.tanaka_2", Identity.operator("31", "t.tanaka_2")),
        ("jukinet://operator/national/ops-1", Identity.operator("national", "ops-1")),
    ],
)
def test_valid_uris_parse_and_round_trip(uri: str, identity: Identity) -> None:
    assert parse_identity_uri(uri) == identity
    assert identity.uri == uri
    assert str(identity) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "jukinet:",
        "jukinet://",
        "jukinet:/national",
        "https://national",
        "JUKINET://national",
        "jukinet://National",
        "jukinet://national/",
        "jukinet://national/x",
        "jukinet://gateway/1",
        "jukinet://national?x=1",
        "jukinet://national#frag",
        "jukinet://user@national",
        "jukinet://national:443",
        "jukinet://unknown/1",
        "jukinet://municipality",
        "jukinet://municipality/",
        "jukinet://municipality/312012",  # bad check digit
        "jukinet://municipality/31201",
        "jukinet://municipality/3120111",
        "jukinet://municipality/482013",  # no prefecture 48
        "jukinet://municipality/312011/",
        "jukinet://municipality/312011/extra",
        "jukinet://municipality//312011",
        "jukinet://municipality/%33%31%32%30%31%31",
        "jukinet://municipality/３１２０１１",  # full-width digits
        "jukinet://municipality/312011?x",
        "jukinet://municipality/312011 ",
        " jukinet://municipality/312011",
        "jukinet://prefecture/00",
        "jukinet://prefecture/48",
        "jukinet://prefecture/1",
        "jukinet://prefecture/031",
        "jukinet://agency/a",
        "jukinet://agency/NTA",
        "jukinet://agency/n_ta",
        "jukinet://agency/" + "a" * 33,
        "jukinet://operator/312011",
        "jukinet://operator/312011/",
        "jukinet://operator/312012/admin",
        "jukinet://operator/48/admin",
        "jukinet://operator/gateway/admin",
        "jukinet://operator/312011/Admin",
        "jukinet://operator/312011/a/b",
        "jukinet://operator/312011/" + "a" * 65,
    ],
)
def test_malformed_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_identity_uri(uri)


def test_longest_valid_ids() -> None:
    assert parse_identity_uri("jukinet://agency/" + "a" * 32).code == "a" * 32
    assert parse_identity_uri("jukinet://operator/312011/" + "a" * 64).operator_id == "a" * 64


@pytest.mark.parametrize(
    ("kind", "code", "operator_id"),
    [
        (Kind.MUNICIPALITY, "312012", ""),
        (Kind.MUNICIPALITY, "312011", "admin"),
        (Kind.NATIONAL, "00", ""),
        (Kind.GATEWAY, "", "x"),
        (Kind.PREFECTURE, "3", ""),
        (Kind.OPERATOR, "312011", ""),
        (Kind.AGENCY, "", ""),
    ],
)
def test_constructor_refuses_invalid_identities(kind: Kind, code: str, operator_id: str) -> None:
    with pytest.raises(ValueError):
        Identity(kind, code, operator_id)


def test_prefecture_code() -> None:
    assert Identity.municipality("312011").prefecture_code == "31"
    assert Identity.prefecture("13").prefecture_code == "13"
    assert Identity.operator("312011", "admin").prefecture_code == "31"
    assert Identity.operator("13", "admin").prefecture_code == "13"
    assert Identity.operator("national", "admin").prefecture_code is None
    assert Identity.national().prefecture_code is None
    assert Identity.gateway().prefecture_code is None
    assert Identity.agency("nta").prefecture_code is None


def test_identities_are_frozen_and_hashable() -> None:
    a = Identity.municipality("312011")
    assert a == parse_identity_uri(a.uri)
    assert len({a, Identity.municipality("312011"), Identity.prefecture("31")}) == 2
    with pytest.raises(AttributeError):
        a.code = "131016"  # type: ignore[misc]
    assert Identity.operator("31", "admin").org == "31"
    assert a.org == ""
