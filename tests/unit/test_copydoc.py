"""The signed copy of a resident record: rendering, signing, offline verification,
every way a copy fails to verify, the document signers of the PKI, and the CLI."""

from __future__ import annotations

import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path

import pypdf
import pytest
from asn1crypto import keys as asn1_keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign import fields, signers
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore

from bench import copies as bench_copies
from jukinet import copydoc, pki
from jukinet.cli.main import main
from jukinet.config import MunicipalConfig, load_config
from jukinet.errors import ConfigError, InvalidArgument
from jukinet.identity import Identity
from jukinet.v1 import common_pb2, relay_pb2

ISSUER, HOME = "131016", "312011"
ISSUED_AT = dt.datetime(2026, 11, 2, 1, 30, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Federation:
    """A PKI with the issuing and the home municipality, and a foreign one."""

    directory: Path
    ca: x509.Certificate
    foreign: Path

    def signer(self, code: str, directory: Path | None = None) -> copydoc.DocumentSigner:
        """Municipality ``code``'s document signer, from this PKI or ``directory``."""
        where = directory or self.directory
        name = pki.cert_name(Identity.municipality(code))
        return copydoc.load_document_signer(
            pki.default_document_key_path(where / f"{name}.key"),
            pki.default_document_certificate_path(where / f"{name}.pem"),
            where / "ca.pem",
        )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Federation:
    directory = tmp_path_factory.mktemp("pki")
    pki.issue_federation(directory, pki.FederationSpec(municipalities=[ISSUER, HOME]))
    foreign = tmp_path_factory.mktemp("foreign-pki")
    pki.issue_federation(foreign, pki.FederationSpec(municipalities=[ISSUER]))
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    return Federation(directory, ca, foreign)


@pytest.fixture(scope="module")
def fonts() -> copydoc.Fonts:
    return copydoc.Fonts.load()


def _answer(*, optional: bool = True) -> relay_pb2.CopyAnswer:
    answer = bench_copies.sample_answer()
    if not optional:
        for entry in answer.entries:
            entry.relationship = ""
            entry.resident_code = ""
    return answer


def _render(fonts: copydoc.Fonts, answer: relay_pb2.CopyAnswer | None = None) -> bytes:
    return copydoc.render_copy(
        answer or _answer(),
        issuer=ISSUER,
        operator="jukinet://operator/131016/t.tanaka",
        issued_at=ISSUED_AT,
        fonts=fonts,
    )


@pytest.fixture(scope="module")
def signed(federation: Federation, fonts: copydoc.Fonts) -> bytes:
    return federation.signer(ISSUER).sign(_render(fonts))


def _text(pdf: bytes) -> str:
    return "\n".join(page.extract_text() for page in pypdf.PdfReader(io.BytesIO(pdf)).pages)


# --- rendering -----------------------------------------------------------------


def test_the_copy_reads_back_in_japanese(signed: bytes) -> None:
    text = _text(signed)
    for expected in (
        "住民票の写し",
        "住所地 鳥取県鳥取市（312011）",
        "世帯主 鳥取　太郎",
        "記載事項の基準日時 2026年11月1日 14時00分（日本時間）",
        "氏名 鳥取　花子",
        "ふりがな とっとり　はなこ",
        "旧氏 髙橋",
        "生年月日 1982年12月24日",
        "性別 女",
        "住所 鳥取県鳥取市東町一丁目220番地",
        "住民となった年月日 2012年7月7日",
        "前住所 東京都千代田区千代田1番1号",
        "続柄 妻",
        "住民票コード 12345678901",
        "交付日時　2026年11月2日 10時30分（日本時間）",
        "交付した市区町村　東京都千代田区（131016）",
        "取扱者　jukinet://operator/131016/t.tanaka",
        "住民基本台帳",
        "1／2頁",
        "2／2頁",
    ):
        assert expected in text


def test_relationship_and_resident_code_only_when_the_answer_carries_them(
    fonts: copydoc.Fonts,
) -> None:
    text = _text(_render(fonts, _answer(optional=False)))
    assert "続柄" not in text and "住民票コード" not in text
    assert "氏名 鳥取　太郎" in text


def test_the_domicile_never_appears(signed: bytes) -> None:
    # Not in the message the copy is made from ...
    for message in (relay_pb2.CopyAnswer, relay_pb2.CopyEntry):
        names = {f.name for f in message.DESCRIPTOR.fields}
        assert not names & {"domicile", "honseki", "domicile_head", "family_register"}
    # ... and neither the item nor its head on the page or in the signed contents.
    reader = PdfFileReader(io.BytesIO(signed))
    attachment = reader.root["/Names"]["/EmbeddedFiles"]["/Names"][1]["/EF"]["/F"].data
    for where in (_text(signed), attachment.decode()):
        assert "本籍" not in where and "筆頭者" not in where


def test_a_household_too_long_for_a_page_goes_on(fonts: copydoc.Fonts) -> None:
    answer = _answer()
    for _ in range(4):
        answer.entries.extend(list(answer.entries[:3]))
    text = _text(_render(fonts, answer))
    assert "（15）" in text and "（16）" not in text
    pages = len(pypdf.PdfReader(io.BytesIO(_render(fonts, answer))).pages)
    assert pages >= 5
    assert f"1／{pages}頁" in text and f"{pages}／{pages}頁" in text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda a: setattr(a, "local_government_code", "999999"), "local_government_code"),
        (lambda a: setattr(a, "as_of", "yesterday"), "as_of"),
        (lambda a: setattr(a.entries[1], "birth_date", "1982-13-01"), "entries[1].birth_date"),
        (lambda a: setattr(a.entries[0], "sex", common_pb2.SEX_UNSPECIFIED), "entries[0].sex"),
        (lambda a: setattr(a.entries[2], "name", ""), "entries[2].name"),
        (lambda a: a.ClearField("entries"), "entries"),
        (lambda a: setattr(a.entries[0], "name", "鳥取　\U0001f600"), "text"),
    ],
)
def test_a_bad_answer_is_refused_naming_the_field(
    fonts: copydoc.Fonts, change: object, field: str
) -> None:
    answer = _answer()
    change(answer)  # type: ignore[operator]
    with pytest.raises(InvalidArgument) as caught:
        _render(fonts, answer)
    assert caught.value.field == field


def test_missing_fonts_are_a_clear_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"copy_font_mincho: .*: not found \(install Debian"):
        copydoc.Fonts.load(mincho=tmp_path / "ipam.ttf")
    (tmp_path / "bad.ttf").write_bytes(b"not a font")
    with pytest.raises(ConfigError, match=r"copy_font_gothic: .*: not a TrueType"):
        copydoc.Fonts.load(gothic=tmp_path / "bad.ttf")


# --- signing and verifying -------------------------------------------------------


def test_the_signature_is_standard_pades_for_pyhanko_s_validator(
    signed: bytes, federation: Federation
) -> None:
    (signature,) = PdfFileReader(io.BytesIO(signed)).embedded_signatures
    assert signature.sig_object["/SubFilter"] == "/ETSI.CAdES.detached"
    attributes = {a["type"].native for a in signature.signer_info["signed_attrs"]}
    assert "signing_certificate_v2" in attributes  # PAdES B-B binds the certificate
    root = asn1_x509.Certificate.load(federation.ca.public_bytes(serialization.Encoding.DER))
    status = validate_pdf_signature(signature, ValidationContext(trust_roots=[root]))
    assert status.bottom_line
    assert status.md_algorithm == "sha256"


def test_verify_says_who_signed_when_and_what(signed: bytes, federation: Federation) -> None:
    verified = copydoc.verify_copy(signed, ca=federation.ca)
    assert (verified.signer_code, verified.signer_name) == (ISSUER, "東京都千代田区")
    assert verified.issued_at == ISSUED_AT
    assert verified.signed_at is not None
    assert abs(verified.signed_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=5)
    assert verified.answer == _answer()
    assert verified.home_name == "鳥取県鳥取市"
    lines = verified.describe()
    assert lines[0].startswith("signed by 東京都千代田区 (131016)")
    assert (
        "  3. 鳥取　一郎 (トットリ　イチロウ), born 2012-07-07, 続柄 子, 住民票コード 12345678902"
        in (lines)
    )


def _refused(pdf: bytes, ca: x509.Certificate) -> str:
    with pytest.raises(copydoc.CopyVerificationError) as caught:
        copydoc.verify_copy(pdf, ca=ca)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_one_byte_changed_inside_the_signed_range_is_reported(
    signed: bytes, federation: Federation
) -> None:
    (signature,) = PdfFileReader(io.BytesIO(signed)).embedded_signatures
    start, length = signature.byte_range[0], signature.byte_range[1]
    at = signed.index(b"(The contents of this copy")
    assert start <= at < start + length
    tampered = signed[: at + 1] + b"t" + signed[at + 2 :]
    assert "changed after it was signed" in _refused(tampered, federation.ca)


def test_an_update_appended_after_signing_is_reported(
    signed: bytes, federation: Federation
) -> None:
    writer = IncrementalPdfFileWriter(io.BytesIO(signed))
    writer.root["/Lang"] = generic.pdf_string("en")
    writer.update_root()
    out = io.BytesIO()
    writer.write(out)
    assert "update is appended after the signature" in _refused(out.getvalue(), federation.ca)


def test_an_unsigned_copy_and_a_non_pdf_are_refused(
    fonts: copydoc.Fonts, federation: Federation
) -> None:
    assert _refused(_render(fonts), federation.ca) == "the PDF is not signed"
    assert _refused(b"%!PS-Adobe-3.0\n", federation.ca).startswith("not a readable PDF")


def test_a_document_signer_of_another_root_is_refused(
    fonts: copydoc.Fonts, federation: Federation
) -> None:
    impostor = federation.signer(ISSUER, federation.foreign).sign(_render(fonts))
    assert "not the federation's" in _refused(impostor, federation.ca)


def _pyhanko_sign(pdf: bytes, key_path: Path, cert_path: Path, ca: Path) -> bytes:
    """Sign with pyHanko directly, by any certificate (sign_copy takes document signers only)."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    der = serialization.Encoding.DER
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    root = x509.load_pem_x509_certificate(ca.read_bytes())
    signer = signers.SimpleSigner(
        signing_cert=asn1_x509.Certificate.load(cert.public_bytes(der)),
        signing_key=asn1_keys.PrivateKeyInfo.load(
            key.private_bytes(der, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        ),
        cert_registry=SimpleCertificateStore.from_certs(
            [asn1_x509.Certificate.load(root.public_bytes(der))]
        ),
    )
    meta = signers.PdfSignatureMetadata(
        field_name="Signature",
        subfilter=fields.SigSeedSubFilter.PADES,
        signer_key_usage={"digital_signature"},
    )
    out = signers.PdfSigner(meta, signer).sign_pdf(IncrementalPdfFileWriter(io.BytesIO(pdf)))
    return bytes(out.getbuffer())


def test_a_federation_certificate_that_is_no_document_signer_is_refused(
    fonts: copydoc.Fonts, federation: Federation
) -> None:
    d = federation.directory
    tls_signed = _pyhanko_sign(
        _render(fonts), d / "municipality-131016.key", d / "municipality-131016.pem", d / "ca.pem"
    )
    message = _refused(tls_signed, federation.ca)
    assert message.startswith("signed with a certificate that is not a document-signing")
    with pytest.raises(ValueError, match="no documentSigning usage"):
        copydoc.sign_copy(
            _render(fonts),
            key=federation.signer(ISSUER).key,
            certificate=x509.load_pem_x509_certificate(
                (d / "municipality-131016.pem").read_bytes()
            ),
            chain=[federation.ca],
        )


def test_a_copy_signed_by_another_municipality_than_its_issuer_is_refused(
    fonts: copydoc.Fonts, federation: Federation
) -> None:
    other = federation.signer(HOME).sign(_render(fonts))
    assert _refused(other, federation.ca) == (
        "signed by the document signer of 312011, but the copy names 131016 as its issuer"
    )


def test_a_signed_pdf_that_is_no_copy_is_refused(federation: Federation) -> None:
    from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter

    writer = PdfFileWriter(stream_xrefs=False)
    blank = writer.add_object(generic.StreamObject(stream_data=b""))
    writer.insert_page(PageObject(blank, (0, 0, 595, 842)))
    out = io.BytesIO()
    writer.write(out)
    signed = federation.signer(ISSUER).sign(out.getvalue())
    assert "not a jukinet copy" in _refused(signed, federation.ca)


# --- the PKI's document signers and the node's settings ----------------------------


def test_every_municipality_gets_a_document_signer_kept_across_runs(
    federation: Federation,
) -> None:
    d = federation.directory
    path = d / "municipality-312011.doc.pem"
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    assert pki.document_signer_code(cert) == HOME
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    assert list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        pki.DOCUMENT_SIGNING
    ]
    # Its URI is no caller identity: a node never takes it for one.
    with pytest.raises(ValueError):
        pki.certificate_identity(cert)
    assert oct((d / "municipality-312011.doc.key").stat().st_mode & 0o777) == "0o600"
    pki.issue_federation(d, pki.FederationSpec(municipalities=[ISSUER, HOME]))
    assert x509.load_pem_x509_certificate(path.read_bytes()).serial_number == cert.serial_number
    # A TLS certificate is no document signer.
    with pytest.raises(ValueError, match="no documentSigning usage"):
        pki.document_signer_code(
            x509.load_pem_x509_certificate((d / "municipality-312011.pem").read_bytes())
        )


def test_a_revoked_document_signer_is_replaced(tmp_path: Path) -> None:
    spec = pki.FederationSpec(municipalities=[HOME])
    pki.issue_federation(tmp_path, spec)
    path = tmp_path / "municipality-312011.doc.pem"
    before = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
    assert pki.revoke(tmp_path, "municipality-312011.doc") == before
    pki.issue_federation(tmp_path, spec)
    assert x509.load_pem_x509_certificate(path.read_bytes()).serial_number != before


def test_the_node_settings_default_beside_the_tls_files(tmp_path: Path) -> None:
    env = {
        "JUKINET_LISTEN": "127.0.0.1:1",
        "JUKINET_DATABASE_URL": "sqlite+aiosqlite:///m.db",
        "JUKINET_LOCAL_GOVERNMENT_CODE": ISSUER,
        "JUKINET_PREFECTURE_TARGET": "127.0.0.1:2",
        "JUKINET_TLS_CA": str(tmp_path / "ca.pem"),
        "JUKINET_TLS_CERT": str(tmp_path / "municipality-131016.pem"),
        "JUKINET_TLS_KEY": str(tmp_path / "municipality-131016.key"),
    }
    config = load_config(MunicipalConfig, None, env)
    assert config.document_files() == (
        tmp_path / "municipality-131016.doc.key",
        tmp_path / "municipality-131016.doc.pem",
    )
    assert Path(config.copy_font_mincho) == copydoc.DEFAULT_MINCHO
    config = load_config(
        MunicipalConfig,
        None,
        {**env, "JUKINET_DOCUMENT_KEY": "/k", "JUKINET_COPY_FONT_GOTHIC": "g"},
    )
    assert config.document_files()[0] == Path("/k")
    assert config.copy_font_gothic == str(Path.cwd() / "g")


def test_a_node_s_signer_files_are_checked(federation: Federation, tmp_path: Path) -> None:
    d = federation.directory
    with pytest.raises(ConfigError, match="not found"):
        copydoc.load_document_signer(
            tmp_path / "x.key", d / "municipality-131016.doc.pem", d / "ca.pem"
        )
    with pytest.raises(ConfigError, match=r"document_certificate: .*not a document-signing"):
        copydoc.load_document_signer(
            d / "municipality-131016.key", d / "municipality-131016.pem", d / "ca.pem"
        )
    with pytest.raises(ConfigError, match="not the document key's"):
        copydoc.load_document_signer(
            d / "municipality-312011.doc.key", d / "municipality-131016.doc.pem", d / "ca.pem"
        )
    assert isinstance(federation.signer(ISSUER).key, ec.EllipticCurvePrivateKey)


# --- the CLI ------------------------------------------------------------------------


def test_cli_verify_exit_codes_and_messages(
    signed: bytes, federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = str(federation.directory / "ca.pem")
    good = tmp_path / "copy.pdf"
    good.write_bytes(signed)
    assert main(["copy", "verify", str(good), "--ca", ca]) == 0
    out = capsys.readouterr().out
    assert out.startswith("signed by 東京都千代田区 (131016)")
    assert "home municipality 鳥取県鳥取市 (312011)" in out

    bad = tmp_path / "bad.pdf"
    at = signed.index(b"(The contents of this copy")
    bad.write_bytes(signed[: at + 1] + b"t" + signed[at + 2 :])
    assert main(["copy", "verify", str(bad), "--ca", ca]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith(f"jukinet copy: {bad}: NOT VALID: the document was changed")

    assert main(["copy", "verify", str(tmp_path / "none.pdf"), "--ca", ca]) == 2
    assert "cannot read" in capsys.readouterr().err
    assert main(["copy", "verify", str(good), "--ca", str(tmp_path / "none.pem")]) == 2
    assert "--ca" in capsys.readouterr().err


def test_cli_make_then_verify(
    federation: Federation, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from google.protobuf import json_format

    d = federation.directory
    answer = tmp_path / "answer.json"
    answer.write_text(json_format.MessageToJson(_answer()), encoding="utf-8")
    config = tmp_path / "m.toml"
    config.write_text(
        f"""listen = "127.0.0.1:1"
database_url = "sqlite+aiosqlite:///m.db"
local_government_code = "{ISSUER}"
prefecture_target = "127.0.0.1:2"
[tls]
ca = "{d}/ca.pem"
cert = "{d}/municipality-131016.pem"
key = "{d}/municipality-131016.key"
""",
        encoding="utf-8",
    )
    out = tmp_path / "copy.pdf"
    argv = ["copy", "make", str(answer), "--config", str(config), "--operator", "t.tanaka"]
    assert main([*argv, "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"wrote {out}\n"
    assert main(["copy", "verify", str(out), "--ca", str(d / "ca.pem")]) == 0
    assert "by t.tanaka" in capsys.readouterr().out

    missing = config.read_text(encoding="utf-8").replace(
        "[tls]", f'copy_font_mincho = "{tmp_path}/nope.ttf"\n[tls]'
    )
    config.write_text(missing, encoding="utf-8")
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jukinet copy: copy_font_mincho: ") and "nope.ttf: not found" in err
