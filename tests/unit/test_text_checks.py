"""The one check of text a person reads, and the printed disclosure it protects."""

from __future__ import annotations

import pytest

from gateway.disclosure import format_disclosure
from jukinet.errors import ConfigError, InvalidArgument
from jukinet.purposes import parse_registry
from jukinet.v1 import common_pb2, delivery_pb2, provision_pb2
from jukinet.validation import check_address, check_kana, check_name, forbidden_character

FORGED = "鳥取 太郎\u2028  status      removed\u202e\u2066\n  address     x\ufeff\U000e0041"


def _disclosure(name: str) -> str:
    record = common_pb2.IdentityRecord(
        resident_code="12345678901",
        name=name,
        name_kana="トットリ タロウ",
        birth_date="1988-05-17",
        sex=common_pb2.SEX_MALE,
        address="鳥取県鳥取市東町1丁目220番地",
        local_government_code="312011",
    )
    state = delivery_pb2.IdentityState(record=record, status=common_pb2.RECORD_STATUS_ACTIVE)
    return format_disclosure(provision_pb2.DiscloseResponse(identity=state))


def test_the_disclosure_cannot_show_a_forged_line() -> None:
    clean = _disclosure("鳥取 太郎")
    forged = _disclosure(FORGED)
    assert len(forged.splitlines()) == len(clean.splitlines())
    assert forbidden_character(forged.replace("\n", "")) is None
    for cp in ("2028", "202E", "2066", "000A", "FEFF", "E0041"):
        assert f"<U+{cp}>" in forged


@pytest.mark.parametrize("ch", ["\u202e", "\u200b", "\ufeff", "\u2029", "\U000e0020", "\u3164"])
def test_hostile_characters_are_named_by_code_point(ch: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_name(f"鳥{ch}取")
    assert f"U+{ord(ch):04X}" in info.value.problem


def test_what_names_need_is_kept() -> None:
    assert check_name("葛\U000e0100城\u3000太郎") == "葛\U000e0100城\u3000太郎"
    assert check_name("邊\ufe00見") == "邊\ufe00見"


def test_kana_is_normalised_to_katakana_and_anything_else_refused() -> None:
    assert check_kana("とっとり　ﾀﾛｳ") == "トットリ　タロウ"
    for bad in ("tottori", "鳥取"):
        with pytest.raises(InvalidArgument):
            check_kana(bad)
    with pytest.raises(InvalidArgument):
        check_kana("とっとり", normalise=False)


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("北海道札幌市中央区北1条西2丁目", "011002"),  # designated city: the ward follows
        ("北海道札幌市中央区北1条西2丁目", "011011"),  # the ward itself
        ("北海道石狩郡当別町白樺町", "013030"),  # with the county
        ("北海道当別町白樺町", "013030"),  # and without it
        ("茨城県龍ヶ崎市米町", "082082"),  # ヶ as people write it, ケ in the data
        ("鳥取県 鳥取市東町", "312011"),
    ],
)
def test_address_forms_real_addresses_use(address: str, code: str) -> None:
    assert check_address(address, "address", code) == address


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("大阪府大阪市北区梅田1丁目", "131016"),
        ("鳥取市東町", "312011"),  # no prefecture
        ("北海道札幌市北1条西2丁目", "011002"),  # no ward
    ],
)
def test_address_outside_the_municipality_is_refused(address: str, code: str) -> None:
    with pytest.raises(InvalidArgument):
        check_address(address, "address", code)


def test_registry_texts_refuse_hostile_characters() -> None:
    text = """
[[purpose]]
code = "X-1"
statute = { ja = "法", en = "Act" }
task = { ja = "確認\u202e", en = "check" }
agencies = ["nenkin"]
operations = ["verify"]
fields = ["name"]
quota = { requests_per_second = 10, burst = 20 }
"""
    with pytest.raises(ConfigError, match="U\\+202E"):
        parse_registry(text)
