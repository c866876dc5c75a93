"""The relay's pure parts: sealed and signed bodies, the signed directory, the
header, the hop rules and the log entry's ``relay`` key."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jukinet import pki
from jukinet.errors import ConfigError, InvalidArgument
from jukinet.identity import Identity
from jukinet.oplog import entry as entries
from jukinet.oplog import merkle
from jukinet.oplog.entry import Entry, EntryError, Operation, Relayed
from jukinet.relay import directory as directories
from jukinet.relay import header as headers
from jukinet.relay import route
from jukinet.relay.seal import (
    Direction,
    SealInvalid,
    Trust,
    open_sealed,
    seal,
    sign_body,
    verify_body,
)
from jukinet.v1 import relay_pb2

TOTTORI, YONAGO, CHIYODA = "312011", "312029", "131016"


def now() -> dt.datetime:
    """The time now (a test's certificates are younger than the module's import)."""
    return dt.datetime.now(dt.UTC)


FUTURE = "an hour ahead"


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("relay-pki")
    pki.issue_federation(d, pki.FederationSpec(municipalities=[TOTTORI, YONAGO, CHIYODA]))
    return d


def keys(pki_dir: Path, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = serialization.load_pem_private_key((pki_dir / f"{name}.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key, x509.load_pem_x509_certificate((pki_dir / f"{name}.pem").read_bytes())


def trust(pki_dir: Path) -> Trust:
    return Trust(x509.load_pem_x509_certificate((pki_dir / "ca.pem").read_bytes()), frozenset())


def header(source: str = TOTTORI, destination: str = CHIYODA) -> bytes:
    return headers.build(
        request_id="ab" * 16,
        kind=relay_pb2.RELAY_KIND_MOVE_IN_NOTICE,
        source=source,
        destination=destination,
        sent_at=now(),
    )


def sealed(pki_dir: Path, raw: bytes) -> relay_pb2.SealedBody:
    key, cert = keys(pki_dir, f"municipality-{TOTTORI}")
    _, recipient = keys(pki_dir, f"municipality-{CHIYODA}")
    signed = sign_body(Direction.REQUEST, raw, b"inner", key, cert)
    return seal(Direction.REQUEST, raw, signed, recipient)


def test_node_certificates_agree_keys(pki_dir: Path) -> None:
    _, cert = keys(pki_dir, f"municipality-{CHIYODA}")
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_agreement


def test_a_sealed_body_opens_at_its_recipient_and_verifies(pki_dir: Path) -> None:
    raw = header()
    key, cert = keys(pki_dir, f"municipality-{CHIYODA}")
    signed = open_sealed(Direction.REQUEST, raw, sealed(pki_dir, raw), key, cert)
    assert signed.body == b"inner"
    verify_body(
        Direction.REQUEST, raw, signed, Identity.municipality(TOTTORI), trust(pki_dir), now()
    )
    # Not as signed by another municipality, nor as an answer.
    with pytest.raises(SealInvalid, match="not by"):
        verify_body(
            Direction.REQUEST, raw, signed, Identity.municipality(YONAGO), trust(pki_dir), now()
        )
    with pytest.raises(SealInvalid, match="signature"):
        verify_body(
            Direction.ANSWER, raw, signed, Identity.municipality(TOTTORI), trust(pki_dir), now()
        )


def test_the_prefecture_key_cannot_open_a_sealed_body(pki_dir: Path) -> None:
    raw = header()
    body = sealed(pki_dir, raw)
    key, cert = keys(pki_dir, "prefecture-13")
    with pytest.raises(SealInvalid, match="another certificate"):
        open_sealed(Direction.REQUEST, raw, body, key, cert)
    # Even claiming to be the recipient's certificate, its key derives another secret.
    _, recipient = keys(pki_dir, f"municipality-{CHIYODA}")
    with pytest.raises(SealInvalid, match="does not open"):
        open_sealed(Direction.REQUEST, raw, body, key, recipient)


def test_a_body_moved_to_another_header_does_not_open(pki_dir: Path) -> None:
    body = sealed(pki_dir, header())
    key, cert = keys(pki_dir, f"municipality-{CHIYODA}")
    with pytest.raises(SealInvalid, match="does not open"):
        open_sealed(Direction.REQUEST, header(source=YONAGO), body, key, cert)
    with pytest.raises(SealInvalid, match="does not open"):
        open_sealed(Direction.ANSWER, header(), body, key, cert)


def directory_file(pki_dir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "directory.toml"
    directories.write_source(
        path,
        [
            (
                Identity.municipality(CHIYODA),
                "127.0.0.1:1",
                pki_dir / f"municipality-{CHIYODA}.pem",
            ),
            (Identity.prefecture("13"), "127.0.0.1:2", pki_dir / "prefecture-13.pem"),
        ],
    )
    return path


def test_a_directory_signed_by_the_national_node_verifies(pki_dir: Path, tmp_path: Path) -> None:
    source = directories.read_source(directory_file(pki_dir, tmp_path))
    key, cert = keys(pki_dir, "national")
    t = now()
    signed = directories.sign(source, serial=7, issued_at=t, key=key, certificate=cert)
    verified = directories.verify(signed, trust(pki_dir), t)
    assert verified.serial == 7
    entry = verified.entry(Identity.municipality(CHIYODA))
    assert entry is not None and entry.address == "127.0.0.1:1"
    assert verified.usable(t + directories.VALIDITY + directories.GRACE)
    assert not verified.usable(t + directories.VALIDITY + directories.GRACE + dt.timedelta(1))


def test_a_directory_signed_by_any_other_key_is_refused(pki_dir: Path, tmp_path: Path) -> None:
    source = directories.read_source(directory_file(pki_dir, tmp_path))
    for name in (f"municipality-{TOTTORI}", "prefecture-13", "gateway"):
        key, cert = keys(pki_dir, name)
        forged = directories.sign(source, serial=99, issued_at=now(), key=key, certificate=cert)
        with pytest.raises(directories.DirectoryInvalid, match="not the national node"):
            directories.verify(forged, trust(pki_dir), now())
    # The national certificate with another key's signature.
    key, _ = keys(pki_dir, "prefecture-13")
    _, national = keys(pki_dir, "national")
    forged = directories.sign(source, serial=99, issued_at=now(), key=key, certificate=national)
    with pytest.raises(directories.DirectoryInvalid, match="signature"):
        directories.verify(forged, trust(pki_dir), now())
    # And a revoked national certificate.
    key, _ = keys(pki_dir, "national")
    signed = directories.sign(source, serial=1, issued_at=now(), key=key, certificate=national)
    revoked = Trust(trust(pki_dir).ca, frozenset({national.serial_number}))
    with pytest.raises(directories.DirectoryInvalid, match="revoked"):
        directories.verify(signed, revoked, now())


def test_a_bad_directory_file_is_one_clear_line(tmp_path: Path) -> None:
    path = tmp_path / "directory.toml"
    path.write_text(
        '[[node]]\nidentity = "jukinet://gateway"\naddress = "x:1"\ncertificate = "c"\n'
    )
    with pytest.raises(ConfigError, match="not a node that relays"):
        directories.read_source(path)
    path.write_text('[[node]]\nidentity = "jukinet://national"\n')
    with pytest.raises(ConfigError, match="needs identity, address and certificate"):
        directories.read_source(path)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"request_id": "xyz"}, "header.request_id"),
        ({"kind": 0}, "header.kind"),
        ({"source": "312012"}, "header.source"),
        ({"destination": TOTTORI}, "header.destination"),
        ({"sent_at": "yesterday"}, "header.sent_at"),
        ({"sent_at": FUTURE}, "header.sent_at"),
    ],
)
def test_a_bad_header_names_its_field(change: dict[str, object], field: str) -> None:
    h = relay_pb2.RelayHeader.FromString(header())
    for name, value in change.items():
        if value == FUTURE:
            value = (now() + dt.timedelta(hours=1)).isoformat()
        setattr(h, name, value)
    with pytest.raises(InvalidArgument) as bad:
        headers.parse(h.SerializeToString(), now())
    assert bad.value.field == field


def test_the_hop_rules() -> None:
    h = headers.parse(header(), now())
    inside = headers.parse(header(destination=YONAGO), now())
    tottori, yonago = Identity.municipality(TOTTORI), Identity.municipality(YONAGO)
    assert route.prefecture_next("31", tottori, h) == Identity.national()
    assert route.prefecture_next("31", tottori, inside) == yonago
    assert route.prefecture_next("13", Identity.national(), h) == Identity.municipality(CHIYODA)
    assert route.national_next(Identity.prefecture("31"), h) == Identity.prefecture("13")
    route.municipal_accept(CHIYODA, Identity.prefecture("13"), h)
    refused: list[Callable[[], object]] = [
        lambda: route.prefecture_next("31", yonago, h),  # not the source
        lambda: route.prefecture_next("31", Identity.national(), h),  # not for its own
        lambda: route.prefecture_next("31", Identity.prefecture("13"), h),
        lambda: route.prefecture_next("13", Identity.national(), inside),
        lambda: route.national_next(Identity.prefecture("13"), h),  # not the source's
        lambda: route.national_next(Identity.prefecture("31"), inside),
        lambda: route.municipal_accept(CHIYODA, Identity.prefecture("31"), h),
        lambda: route.municipal_accept(YONAGO, Identity.prefecture("31"), h),
    ]
    for call in refused:
        with pytest.raises(route.WrongHop):
            call()


def test_a_relay_entry_carries_its_envelope_and_nothing_else_changes() -> None:
    relayed = Relayed("ab" * 16, "move-in-notice", TOTTORI, CHIYODA)
    op = Operation(now(), "jukinet://prefecture/31", "jukinet://prefecture/31", "Relay", (), "ok")
    plain = entries.encode(Entry(0, op, merkle.EMPTY_ROOT))
    assert b"relay" not in plain.replace(b'"Relay"', b"")
    with_relay = dataclasses.replace(op, relay=relayed)
    data = entries.encode(Entry(0, with_relay, merkle.EMPTY_ROOT))
    assert json.loads(data)["relay"] == {
        "request_id": "ab" * 16,
        "kind": "move-in-notice",
        "source": TOTTORI,
        "destination": CHIYODA,
    }
    assert entries.decode(data).operation == with_relay
    doc = json.loads(data)
    doc["relay"]["extra"] = "x"
    with pytest.raises(EntryError, match="relay field"):
        entries.decode(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
