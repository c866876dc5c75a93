"""The private PKI: CA and leaf contents, key files, the CRL, idempotent federation."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from jukinet import pki
from jukinet.identity import Identity


def cert(path: Path) -> x509.Certificate:
    """The certificate in the PEM file at ``path``."""
    return x509.load_pem_x509_certificate(path.read_bytes())


def days(c: x509.Certificate) -> float:
    """How many days certificate ``c`` is valid."""
    return (c.not_valid_after_utc - c.not_valid_before_utc) / dt.timedelta(days=1)


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    """A directory holding a fresh CA."""
    pki.create_ca(tmp_path, "test root")
    return tmp_path


def test_ca_is_a_p256_sha256_root_with_pathlen_0(ca_dir: Path) -> None:
    ca = cert(ca_dir / "ca.pem")
    assert ca.subject == ca.issuer
    key = ca.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    ca.verify_directly_issued_by(ca)
    bc = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = ca.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    assert 3649 < days(ca) < 3651
    assert stat.S_IMODE((ca_dir / "ca.key").stat().st_mode) == 0o600
    # An empty CRL exists from the start so nodes can always be pointed at it.
    assert pki.load_revoked_serials(ca_dir / "crl.pem", ca=ca_dir / "ca.pem") == frozenset()


def test_create_ca_refuses_to_replace_a_ca(ca_dir: Path) -> None:
    before = (ca_dir / "ca.pem").read_bytes()
    with pytest.raises(FileExistsError):
        pki.create_ca(ca_dir)
    assert (ca_dir / "ca.pem").read_bytes() == before


def test_node_leaf_contents(ca_dir: Path) -> None:
    issued = pki.issue(ca_dir, Identity.municipality("312011"), "municipality-312011")
    leaf = cert(ca_dir / "municipality-312011.pem")
    assert issued.serial == leaf.serial_number
    leaf.verify_directly_issued_by(cert(ca_dir / "ca.pem"))
    assert isinstance(leaf.signature_hash_algorithm, hashes.SHA256)
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "jukinet://municipality/312011"
    ]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "municipality-312011"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and not ku.key_cert_sign and not ku.crl_sign
    # A node's key also agrees the keys of the bodies relayed to it sealed.
    assert ku.key_agreement and not ku.encipher_only and not ku.decipher_only
    bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert not bc.ca
    assert 396 < days(leaf) < 398
    assert pki.certificate_identity(leaf) == Identity.municipality("312011")


def test_key_file_is_private_and_matches(ca_dir: Path) -> None:
    pki.issue(ca_dir, Identity.national(), "national")
    key_path = ca_dir / "national.key"
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert(ca_dir / "national.pem").public_key()
    assert not list(ca_dir.glob(".*.tmp"))  # no temporary files left behind


def test_clients_get_no_host_sans_and_hosts_are_configurable(ca_dir: Path) -> None:
    pki.issue(ca_dir, Identity.agency("nta"), "agency-nta", 30)
    agency = cert(ca_dir / "agency-nta.pem")
    san = agency.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == []
    assert san.get_values_for_type(x509.IPAddress) == []
    assert 29 < days(agency) < 31

    pki.issue(ca_dir, Identity.prefecture("31"), "p31", hosts=["prefecture-31.svc", "10.0.0.7"])
    node = cert(ca_dir / "p31.pem")
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["prefecture-31.svc"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7")]


def test_leaf_cannot_outlive_the_ca(tmp_path: Path) -> None:
    pki.create_ca(tmp_path, days=100)
    pki.issue(tmp_path, Identity.gateway(), "gateway", 397)
    assert (
        cert(tmp_path / "gateway.pem").not_valid_after_utc
        <= cert(tmp_path / "ca.pem").not_valid_after_utc
    )


@pytest.mark.parametrize("name", ["../x", "a/b", ".hidden", "ca", "crl", "", "a b"])
def test_bad_names_are_refused(ca_dir: Path, name: str) -> None:
    with pytest.raises(ValueError):
        pki.issue(ca_dir, Identity.national(), name)


def test_issue_without_a_ca_fails_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no CA"):
        pki.issue(tmp_path, Identity.national(), "national")


def test_crl_round_trip(ca_dir: Path) -> None:
    a = pki.issue(ca_dir, Identity.municipality("312011"), "a")
    b = pki.issue(ca_dir, Identity.municipality("131016"), "b")
    assert pki.revoke(ca_dir, "a") == a.serial
    crl_path = ca_dir / "crl.pem"
    assert pki.load_revoked_serials(crl_path, ca=ca_dir / "ca.pem") == {a.serial}
    assert pki.revoke(ca_dir, "b") == b.serial
    assert pki.revoke(ca_dir, "a") == a.serial  # idempotent
    assert pki.load_revoked_serials(crl_path) == {a.serial, b.serial}
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    ca_key = cert(ca_dir / "ca.pem").public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(ca_key)
    assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 4


def test_crl_from_another_ca_is_refused(
    ca_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = tmp_path_factory.mktemp("other")
    pki.create_ca(other, "other root")
    with pytest.raises(ValueError):
        pki.load_revoked_serials(other / "crl.pem", ca=ca_dir / "ca.pem")


def test_federation_is_complete_and_idempotent(tmp_path: Path) -> None:
    spec = pki.FederationSpec(
        municipalities=["312011", "131016"], prefectures=["31"], agencies=["nta"], operators=True
    )
    first = pki.issue_federation(tmp_path, spec)
    names = [i.name for i in first]
    assert names == [
        "national",
        "gateway",
        "prefecture-31",
        "prefecture-13",
        "municipality-312011",
        "municipality-131016",
        "agency-nta",
        "terminal-312011-desk1",
        "terminal-312011-desk2",
        "terminal-131016-desk1",
        "terminal-131016-desk2",
        "operator-national-admin",
        "operator-31-admin",
        "operator-13-admin",
        "operator-312011-admin",
        "operator-131016-admin",
    ]
    assert all(i.created for i in first)
    for code in ("312011", "131016"):
        # Each municipality's operator CA, made once and kept after.
        assert (pki.operator_ca_dir(tmp_path, code) / "ca.pem").exists()
    operator_ca = (pki.operator_ca_dir(tmp_path, "312011") / "ca.pem").read_bytes()
    for issued in first:
        assert pki.certificate_identity(cert(issued.cert_path)) == issued.identity
        assert issued.name == pki.cert_name(issued.identity)

    ca_before = (tmp_path / "ca.pem").read_bytes()
    second = pki.issue_federation(tmp_path, spec)
    assert not any(i.created for i in second)
    assert [i.serial for i in second] == [i.serial for i in first]
    assert (tmp_path / "ca.pem").read_bytes() == ca_before
    assert (pki.operator_ca_dir(tmp_path, "312011") / "ca.pem").read_bytes() == operator_ca

    # A revoked or missing certificate is replaced; the rest are kept.
    pki.revoke(tmp_path, "municipality-312011")
    (tmp_path / "agency-nta.key").unlink()
    third = {i.name: i for i in pki.issue_federation(tmp_path, spec)}
    assert third["municipality-312011"].created
    assert third["agency-nta"].created
    assert sum(i.created for i in third.values()) == 2


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="jukinet")
    pki.register_cli(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(argv)
        code: int = args.func(args)
        return code

    d = str(tmp_path / "p")
    assert run("pki", "init", "--dir", d) == 0
    assert run("pki", "init", "--dir", d) == 1
    assert "refusing" in capsys.readouterr().err
    assert run("pki", "federation", "--dir", d, "--municipality", "312011", "--agency", "nta") == 0
    out = capsys.readouterr().out.splitlines()
    # national, gateway, prefecture, municipality, agency, two counter terminals
    assert len(out) == 7 and all(line.startswith("wrote ") for line in out)
    assert run("pki", "federation", "--dir", d, "--municipality", "312011") == 0
    assert all(line.startswith("kept ") for line in capsys.readouterr().out.splitlines())
    assert (
        run(
            "pki",
            "issue",
            "--dir",
            d,
            "--identity",
            "jukinet://agency/mhlw",
            "--name",
            "m",
            "--days",
            "5",
        )
        == 0
    )
    assert "jukinet://agency/mhlw" in capsys.readouterr().out
    assert run("pki", "issue", "--dir", d, "--identity", "jukinet://agency/M", "--name", "m") == 1
    assert capsys.readouterr().err.count("\n") == 1
    assert run("pki", "revoke", "--dir", d, "--name", "m") == 0
    assert "revoked" in capsys.readouterr().out
    assert len(pki.load_revoked_serials(Path(d) / "crl.pem")) == 1


def test_issue_over_an_existing_name_is_refused_without_force(ca_dir: Path) -> None:
    first = pki.issue(ca_dir, Identity.municipality("312011"), "m")
    before = (first.cert_path.read_bytes(), first.key_path.read_bytes())
    with pytest.raises(FileExistsError, match="--force"):
        pki.issue(ca_dir, Identity.municipality("312011"), "m")
    assert (first.cert_path.read_bytes(), first.key_path.read_bytes()) == before
    assert first.serial not in pki.load_revoked_serials(ca_dir / "crl.pem")
    # A stray key alone is refused too: it would be silently replaced.
    (ca_dir / "k.key").write_bytes(b"not mine")
    with pytest.raises(FileExistsError):
        pki.issue(ca_dir, Identity.municipality("312029"), "k")
    assert (ca_dir / "k.key").read_bytes() == b"not mine"


def test_forced_issue_revokes_the_certificate_it_replaces(ca_dir: Path) -> None:
    first = pki.issue(ca_dir, Identity.municipality("312011"), "m")
    second = pki.issue(ca_dir, Identity.municipality("312011"), "m", force=True)
    assert second.serial != first.serial
    revoked = pki.load_revoked_serials(ca_dir / "crl.pem", ca=ca_dir / "ca.pem")
    assert first.serial in revoked and second.serial not in revoked
    assert cert(second.cert_path).serial_number == second.serial


def test_cli_issue_needs_force_to_replace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = argparse.ArgumentParser(prog="jukinet")
    pki.register_cli(parser.add_subparsers(dest="command", required=True))

    def run(*argv: str) -> int:
        args = parser.parse_args(argv)
        code: int = args.func(args)
        return code

    d = str(tmp_path / "p")
    assert run("pki", "init", "--dir", d) == 0
    issue = ("pki", "issue", "--dir", d, "--identity", "jukinet://agency/nta")
    assert run(*issue) == 0
    old = cert(Path(d) / "agency-nta.pem").serial_number
    capsys.readouterr()
    assert run(*issue) == 1
    err = capsys.readouterr().err
    assert "--force" in err and err.count("\n") == 1
    assert run(*issue, "--force") == 0
    assert old in pki.load_revoked_serials(Path(d) / "crl.pem")
