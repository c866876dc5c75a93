"""The copy of a resident record issued at another municipality (住民票の写しの広域交付),
as a Japanese PDF with a PAdES signature.

A municipality C issues the copy; its contents come from the resident's home
municipality B as a :class:`~jukinet.v1.relay_pb2.CopyAnswer`. Three steps,
each a pure function of its inputs (no network, no database):

* :func:`render_copy` lays the answer out on A4 pages in Japanese, with the
  IPA fonts (:class:`Fonts`, Debian's ``fonts-ipafont-mincho`` and
  ``fonts-ipafont-gothic``) embedded as subsets, and embeds the same contents
  as a JSON attachment (``jukinet-copy.json``) so that a verifier reads back
  exactly what was signed rather than scraping the page text.
* :func:`sign_copy` signs it with C's document-signing key and certificate
  (:func:`jukinet.pki.issue_document_signer`): PAdES baseline B-B, subfilter
  ``ETSI.CAdES.detached``, SHA-256 / ECDSA P-256, the chain embedded. B-T
  would add a signature timestamp from a time-stamping authority, which the
  federation does not have: the signing time is the signer's own claim.
* :func:`verify_copy` checks such a file offline against the federation's
  root CA and returns what it says (:class:`VerifiedCopy`), or raises
  :class:`CopyVerificationError` with one line: not a PDF, unsigned, the
  signed bytes changed, anything appended after the signature (an
  incremental update), a signature not by a federation certificate, a
  certificate that is not a document signer, or a signer other than the
  municipality the copy names as its issuer.

What the copy shows: the title, the home municipality, the time B read its
register (in Japan time), the household's head and address, and for each
person 氏名 with its reading, 旧氏 and 通称 where registered, 生年月日, 性別,
住所, 住民となった年月日, 前住所, and 続柄 and 住民票コード only when the answer
carries them. The domicile (本籍) and its head (筆頭者) are not in the message
and so never on the copy. Dates are written in the Western calendar
(2026年11月1日): the core has no era (和暦) conversion.

:func:`sign_copy` runs pyHanko's signer on an event loop of its own: call it
from a thread (``asyncio.to_thread``), never on a running loop.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jaconv
from asn1crypto import algos as asn1_algos
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fontTools import ttLib
from google.protobuf import json_format
from pyhanko.pdf_utils import embed, generic
from pyhanko.pdf_utils.font.opentype import GlyphAccumulator
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.misc import PdfError
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PageObject, PdfFileWriter
from pyhanko.sign import fields, signers
from pyhanko.sign.general import SigningError
from pyhanko.sign.validation import validate_pdf_signature
from pyhanko.sign.validation.errors import SignatureValidationError
from pyhanko.sign.validation.status import SignatureCoverageLevel
from pyhanko_certvalidator import ValidationContext
from pyhanko_certvalidator.registry import SimpleCertificateStore

from jukinet import localgov, pki
from jukinet.clock import JST
from jukinet.config import IPA_GOTHIC, IPA_MINCHO
from jukinet.errors import ConfigError, InvalidArgument
from jukinet.textwidth import display_width
from jukinet.v1 import common_pb2, relay_pb2

PrivateKey = ec.EllipticCurvePrivateKey
"""A document-signing key: the federation's keys are all ECDSA P-256."""

DEFAULT_MINCHO = Path(IPA_MINCHO)
DEFAULT_GOTHIC = Path(IPA_GOTHIC)
ATTACHMENT = "jukinet-copy.json"
"""The embedded file holding the copy's contents as signed."""
FORMAT = "jukinet-copy/1"
TITLE = "住民票の写し"
SUBFILTER = "/ETSI.CAdES.detached"
_FIELD = "Signature"

# A4 in points, and the layout. IPA Mincho and IPA Gothic (not their P
# variants) are fixed-pitch: a full-width character is 1 em, a half-width
# one 1/2 em, which is what display_width counts in columns of 1/2 em.
_PAGE_W, _PAGE_H = 595.28, 841.89
_LEFT, _RIGHT, _TOP, _BOTTOM = 56.0, 56.0, 64.0, 64.0
_BODY = 10
_LABEL_W = 120.0
_LINE = 16.0
_SEX = {common_pb2.SEX_MALE: "男", common_pb2.SEX_FEMALE: "女"}
# Characters that draw nothing and need no glyph: variation selectors (IVS
# and the standardised ones), joiners.
_INVISIBLE = frozenset([*range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0), 0x200B, 0x200C, 0x200D])


class CopyVerificationError(Exception):
    """A copy that does not verify; the message is one line saying why."""


@dataclass(frozen=True)
class Fonts:
    """The two fonts of a copy, read once: Mincho for the text, Gothic for headings."""

    mincho: bytes
    gothic: bytes
    mincho_path: Path
    gothic_path: Path
    covered: frozenset[int]
    """The code points both fonts draw."""

    @classmethod
    def load(
        cls, mincho: Path | str = DEFAULT_MINCHO, gothic: Path | str = DEFAULT_GOTHIC
    ) -> Fonts:
        """Read the fonts; :class:`~jukinet.errors.ConfigError` naming the setting if one is
        missing or is no TrueType/OpenType font."""
        data: dict[str, bytes] = {}
        cover: list[frozenset[int]] = []
        for setting, path, package in (
            ("copy_font_mincho", Path(mincho), "fonts-ipafont-mincho"),
            ("copy_font_gothic", Path(gothic), "fonts-ipafont-gothic"),
        ):
            try:
                data[setting] = path.read_bytes()
            except FileNotFoundError:
                raise ConfigError(
                    f"{setting}: {path}: not found (install Debian's {package}: "
                    "`make system-deps`, or set it to an IPA font file)"
                ) from None
            except OSError as exc:
                raise ConfigError(f"{setting}: {path}: cannot read ({exc.strerror})") from None
            try:
                cmap = ttLib.TTFont(io.BytesIO(data[setting]), lazy=True).getBestCmap()
            except Exception as exc:  # fontTools raises many kinds on a bad file
                raise ConfigError(f"{setting}: {path}: not a TrueType/OpenType font") from exc
            cover.append(frozenset(cmap))
        return cls(
            mincho=data["copy_font_mincho"],
            gothic=data["copy_font_gothic"],
            mincho_path=Path(mincho),
            gothic_path=Path(gothic),
            covered=cover[0] & cover[1],
        )


@dataclass(frozen=True)
class VerifiedCopy:
    """What a verified copy says, and who signed it."""

    signer_code: str
    """The local government code in the signer's document-signing certificate."""
    signer_name: str
    signed_at: dt.datetime | None
    """The signing time the signer states (no timestamp authority vouches for it)."""
    issued_at: dt.datetime
    operator: str
    answer: relay_pb2.CopyAnswer
    home_name: str

    def describe(self) -> list[str]:
        """The lines ``jukinet copy verify`` prints."""
        signed = _jst(self.signed_at) if self.signed_at is not None else "(no time stated)"
        lines = [
            f"signed by {self.signer_name} ({self.signer_code}), document signer "
            f"{pki.document_signer_uri(self.signer_code)}",
            f"signed at {signed} (the signer's own clock; no timestamp authority)",
            f"{TITLE}: issued {_jst(self.issued_at)} by {self.operator}",
            f"home municipality {self.home_name} ({self.answer.local_government_code}), "
            f"register as of {_jst(_instant(self.answer.as_of, 'as_of'))}",
            f"household head {self.answer.head_name}, {self.answer.household_address}",
        ]
        for n, e in enumerate(self.answer.entries, 1):
            extra = "".join(
                f", {label} {value}"
                for label, value in (("続柄", e.relationship), ("住民票コード", e.resident_code))
                if value
            )
            lines.append(f"  {n}. {e.name} ({e.name_kana}), born {e.birth_date}{extra}")
        return lines


# --- rendering ----------------------------------------------------------------


@dataclass(frozen=True)
class _Text:
    gothic: bool
    size: int
    x: float
    y: float
    text: str


@dataclass(frozen=True)
class _Rule:
    y: float


_Item = _Text | _Rule


def render_copy(
    answer: relay_pb2.CopyAnswer,
    *,
    issuer: str,
    operator: str,
    issued_at: dt.datetime,
    fonts: Fonts,
) -> bytes:
    """The unsigned PDF of the copy ``issuer`` (C's local government code) issues
    from ``answer`` at ``issued_at`` (aware), handled by ``operator`` (a name or
    an operator's identity URI).

    Bad input (an unknown municipality, a malformed date, a character the
    fonts cannot draw, empty required text) is an
    :class:`~jukinet.errors.InvalidArgument` naming the field: a copy is
    never printed with a wrong or missing character.
    """
    issuer_name = _municipality_name(issuer, "issuer")
    home_name = _municipality_name(answer.local_government_code, "local_government_code")
    if issued_at.utcoffset() is None:
        raise InvalidArgument("issued_at", "must carry its time zone")
    if not operator.strip():
        raise InvalidArgument("operator", "required")
    as_of = _instant(answer.as_of, "as_of")
    for field in ("head_name", "household_address"):
        if not getattr(answer, field).strip():
            raise InvalidArgument(field, "required")
    if not answer.entries:
        raise InvalidArgument("entries", "a copy shows at least one person")
    blocks = [_entry_rows(e, f"entries[{i}]") for i, e in enumerate(answer.entries)]
    head = [
        ("住所地", f"{home_name}（{answer.local_government_code}）"),
        ("世帯主", answer.head_name),
        ("世帯の住所", answer.household_address),
        ("記載事項の基準日時", f"{_jst(as_of)}（日本時間）"),
    ]
    footer = [
        f"この写しは、{home_name}の住民基本台帳に記録された事項を、住民基本台帳"
        f"ネットワークシステムを通じて受け取り、{issuer_name}が交付するものです。",
        f"交付日時　{_jst(issued_at)}（日本時間）",
        f"交付した市区町村　{issuer_name}（{issuer}）",
        f"取扱者　{operator}",
        f"電子署名　{issuer_name}の文書署名用証明書による署名（PAdES）",
    ]
    pages = _paginate(head, blocks, footer)
    _check_drawable(pages, fonts)
    payload = {
        "format": FORMAT,
        "issuer": issuer,
        "operator": operator,
        "issued_at": _rfc3339(issued_at),
        "answer": json_format.MessageToDict(answer, preserving_proto_field_name=True),
    }
    return _write_pdf(pages, fonts, payload, title=f"{TITLE}（{issuer_name}交付）")


def _entry_rows(e: relay_pb2.CopyEntry, where: str) -> list[tuple[str, str]]:
    for field in ("name", "birth_date", "address", "registered_on"):
        if not getattr(e, field).strip():
            raise InvalidArgument(f"{where}.{field}", "required")
    if e.sex not in _SEX:
        raise InvalidArgument(f"{where}.sex", "must be male or female")
    rows = [
        ("氏名", e.name),
        ("ふりがな", jaconv.kata2hira(e.name_kana)),
        ("旧氏", e.former_surname),
        ("通称", e.alias),
        ("生年月日", _japanese_date(e.birth_date, f"{where}.birth_date")),
        ("性別", _SEX[e.sex]),
        ("住所", e.address),
        ("住民となった年月日", _japanese_date(e.registered_on, f"{where}.registered_on")),
        ("前住所", e.previous_address),
        ("続柄", e.relationship),
        ("住民票コード", e.resident_code),
    ]
    # Optional items appear only when the answer carries them.
    required = {"氏名", "生年月日", "性別", "住所", "住民となった年月日"}
    return [(label, value) for label, value in rows if value or label in required]


def _wrap(text: str, width: float, size: float) -> list[str]:
    """``text`` cut into lines no wider than ``width`` points at ``size``."""
    columns = max(2, int(width / (size / 2)))
    lines, line = [], ""
    for ch in text:
        if line and display_width(line + ch) > columns:
            lines.append(line)
            line = ""
        line += ch
    return [*lines, line]


def _paginate(
    head: Sequence[tuple[str, str]],
    blocks: Sequence[Sequence[tuple[str, str]]],
    footer: Sequence[str],
) -> list[list[_Item]]:
    """The copy's items, page by page, each page under the title."""
    value_x = _LEFT + _LABEL_W
    value_w = _PAGE_W - _RIGHT - value_x
    full_w = _PAGE_W - _LEFT - _RIGHT

    def rows_items(rows: Sequence[tuple[str, str]], top: float) -> tuple[list[_Item], float]:
        items: list[_Item] = []
        y = top
        for label, value in rows:
            items.append(_Text(True, _BODY, _LEFT, y, label))
            for line in _wrap(value, value_w, _BODY):
                items.append(_Text(False, _BODY, value_x, y, line))
                y -= _LINE
        return items, y

    pages: list[list[_Item]] = []
    page: list[_Item] = []
    y = 0.0

    def new_page() -> None:
        nonlocal page, y
        page = [_Text(True, 20, (_PAGE_W - 20 * len(TITLE)) / 2, _PAGE_H - _TOP, TITLE)]
        pages.append(page)
        y = _PAGE_H - _TOP - 40

    def place(items: list[_Item], height: float) -> None:
        nonlocal y
        if y - height < _BOTTOM and len(page) > 1:
            new_page()
        top = y
        shift = lambda item: (  # noqa: E731
            dataclasses.replace(item, y=item.y - (_PAGE_H - top))
            if isinstance(item, _Text)
            else _Rule(item.y - (_PAGE_H - top))
        )
        page.extend(shift(item) for item in items)
        y -= height

    new_page()
    items, bottom = rows_items(head, _PAGE_H)
    place([*items, _Rule(bottom + _LINE / 2)], _PAGE_H - bottom + 4)
    for n, rows in enumerate(blocks, 1):
        items, bottom = rows_items(rows, _PAGE_H - _LINE)
        heading = _Text(True, _BODY, _LEFT, _PAGE_H, f"（{n}）")
        place([heading, *items, _Rule(bottom + _LINE / 2)], _PAGE_H - bottom + 4)
    text: list[_Item] = []
    fy = _PAGE_H - _LINE
    for paragraph in footer:
        for line in _wrap(paragraph, full_w, _BODY):
            text.append(_Text(False, _BODY, _LEFT, fy, line))
            fy -= _LINE
    place(text, _PAGE_H - fy)
    total = len(pages)
    for number, items_of_page in enumerate(pages, 1):
        mark = f"{number}／{total}頁"
        x = _PAGE_W - _RIGHT - display_width(mark) * 9 / 2
        items_of_page.append(_Text(False, 9, x, _BOTTOM / 2, mark))
    return pages


def _check_drawable(pages: Sequence[Sequence[_Item]], fonts: Fonts) -> None:
    for items in pages:
        for item in items:
            if isinstance(item, _Text):
                for ch in item.text:
                    if ord(ch) not in fonts.covered and ord(ch) not in _INVISIBLE:
                        raise InvalidArgument(
                            "text",
                            f"U+{ord(ch):04X} ({ch}) in {item.text!r} is not in the copy's "
                            "fonts; it cannot be printed",
                        )


def _write_pdf(
    pages: Sequence[Sequence[_Item]], fonts: Fonts, payload: dict[str, Any], *, title: str
) -> bytes:
    writer = PdfFileWriter(stream_xrefs=False)
    engines = {
        False: GlyphAccumulator(writer, io.BytesIO(fonts.mincho), _BODY, bcp47_lang_code="ja"),
        True: GlyphAccumulator(writer, io.BytesIO(fonts.gothic), _BODY, bcp47_lang_code="ja"),
    }
    for items in pages:
        ops: list[bytes] = []
        for item in items:
            if isinstance(item, _Rule):
                ops.append(
                    b"0.5 w %.2f %.2f m %.2f %.2f l S" % (_LEFT, item.y, _PAGE_W - _RIGHT, item.y)
                )
                continue
            engine = engines[item.gothic]
            engine.font_size = item.size
            shaped = engine.shape(item.text).graphics_ops
            font = b"/F2" if item.gothic else b"/F1"
            ops.append(
                b"BT %s %g Tf 1 0 0 1 %.2f %.2f Tm %s ET"
                % (font, item.size, item.x, item.y, shaped)
            )
        stream = generic.StreamObject(stream_data=b"\n".join(ops))
        stream.compress()
        resources = generic.DictionaryObject(
            {
                generic.pdf_name("/Font"): generic.DictionaryObject(
                    {
                        generic.pdf_name("/F1"): engines[False].as_resource(),
                        generic.pdf_name("/F2"): engines[True].as_resource(),
                    }
                )
            }
        )
        writer.insert_page(
            PageObject(writer.add_object(stream), (0, 0, _PAGE_W, _PAGE_H), resources)
        )
    for engine in engines.values():
        engine.prepare_write()
    data = json.dumps(payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    embed.embed_file(
        writer,
        embed.FileSpec(
            file_spec_string=ATTACHMENT,
            file_name=ATTACHMENT,
            embedded_data=embed.EmbeddedFileObject.from_file_data(
                writer, data.encode(), mime_type="application/json"
            ),
            description="The contents of this copy as issued (JSON)",
        ),
    )
    writer.root[generic.pdf_name("/Lang")] = generic.pdf_string("ja")
    writer.set_info(
        generic.DictionaryObject(
            {
                generic.pdf_name("/Title"): generic.pdf_string(title),
                generic.pdf_name("/Producer"): generic.pdf_string("jukinet"),
            }
        )
    )
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


# --- signing ------------------------------------------------------------------


def _asn1(cert: x509.Certificate) -> asn1_x509.Certificate:
    return asn1_x509.Certificate.load(cert.public_bytes(serialization.Encoding.DER))


class _KeySigner(signers.Signer):
    """pyHanko's signer over a key held by ``cryptography`` (the key never leaves it)."""

    def __init__(
        self, key: PrivateKey, certificate: x509.Certificate, chain: Sequence[x509.Certificate]
    ) -> None:
        super().__init__(
            signing_cert=_asn1(certificate),
            cert_registry=SimpleCertificateStore.from_certs([_asn1(c) for c in chain]),
            signature_mechanism=asn1_algos.SignedDigestAlgorithm({"algorithm": "sha256_ecdsa"}),
        )
        self._key = key

    async def async_sign_raw(
        self, data: bytes, digest_algorithm: str, dry_run: bool = False
    ) -> bytes:
        """ECDSA P-256 over ``data`` with SHA-256."""
        if digest_algorithm != "sha256":
            raise SigningError(f"copies are signed with SHA-256, not {digest_algorithm}")
        return self._key.sign(data, ec.ECDSA(hashes.SHA256()))


def sign_copy(
    pdf: bytes,
    *,
    key: PrivateKey,
    certificate: x509.Certificate,
    chain: Sequence[x509.Certificate],
) -> bytes:
    """``pdf`` signed (PAdES B-B, ``ETSI.CAdES.detached``) by ``key``, whose
    document-signing ``certificate`` is embedded with ``chain`` (the root CA).

    ValueError if the certificate is not a document signer or not ``key``'s.
    """
    code = pki.document_signer_code(certificate)
    if certificate.public_key() != key.public_key():
        raise ValueError("the document-signing certificate is not the key's")
    place = _municipality_name(code, "certificate")
    meta = signers.PdfSignatureMetadata(
        field_name=_FIELD,
        md_algorithm="sha256",
        subfilter=fields.SigSeedSubFilter.PADES,
        reason=f"{TITLE}の交付",
        location=place,
        signer_key_usage={"digital_signature", "non_repudiation"},
    )
    writer = IncrementalPdfFileWriter(io.BytesIO(pdf))
    out = signers.PdfSigner(meta, _KeySigner(key, certificate, chain)).sign_pdf(writer)
    return bytes(out.getbuffer())


# --- verification -------------------------------------------------------------


def verify_copy(pdf: bytes, *, ca: x509.Certificate) -> VerifiedCopy:
    """Check a signed copy offline against the federation's root ``ca``; what it says.

    :class:`CopyVerificationError` (one line) when it is not a PDF, carries
    no or several signatures, its signed bytes changed, something was
    appended after the signature, the signature is not PAdES or not by a
    certificate of ``ca``, the certificate is not a document signer, or the
    signer is not the municipality the copy names as its issuer.
    """
    try:
        reader = PdfFileReader(io.BytesIO(pdf), strict=False)
        signatures = reader.embedded_signatures
    except (PdfError, ValueError, KeyError, TypeError) as exc:
        raise CopyVerificationError(f"not a readable PDF ({exc})") from None
    if not signatures:
        raise CopyVerificationError("the PDF is not signed")
    if len(signatures) != 1:
        raise CopyVerificationError(f"expected one signature, found {len(signatures)}")
    signature = signatures[0]
    if signature.sig_object.get("/SubFilter") != SUBFILTER:
        raise CopyVerificationError(
            f"not a PAdES signature (subfilter {signature.sig_object.get('/SubFilter')})"
        )
    try:
        cert = x509.load_der_x509_certificate(signature.signer_cert.dump())
    except ValueError:
        raise CopyVerificationError("the signer's certificate cannot be read") from None
    context = ValidationContext(
        trust_roots=[_asn1(ca)], allow_fetching=False, revocation_mode="soft-fail"
    )
    try:
        status = validate_pdf_signature(signature, context, skip_diff=True)
    except (SignatureValidationError, PdfError, ValueError) as exc:
        raise CopyVerificationError(f"the signature cannot be checked ({exc})") from None
    if not status.intact or not status.valid:
        raise CopyVerificationError(
            "the document was changed after it was signed (its signature does not match)"
        )
    if status.coverage is not SignatureCoverageLevel.ENTIRE_FILE:
        raise CopyVerificationError(
            "the file was changed after it was signed: an update is appended after the signature"
        )
    try:
        code = pki.document_signer_code(cert)
    except ValueError as exc:
        raise CopyVerificationError(f"signed with a certificate that is {exc}") from None
    if not status.trusted:
        raise CopyVerificationError(
            "the signer's certificate is not the federation's (it does not chain to the root CA"
            " given, or is not valid now)"
        )
    payload = _payload(reader)
    if payload["issuer"] != code:
        raise CopyVerificationError(
            f"signed by the document signer of {code}, but the copy names "
            f"{payload['issuer']} as its issuer"
        )
    answer = relay_pb2.CopyAnswer()
    try:
        json_format.ParseDict(payload["answer"], answer)
        issued_at = _instant(payload["issued_at"], "issued_at")
    except (json_format.ParseError, InvalidArgument) as exc:
        raise CopyVerificationError(f"the signed contents are malformed ({exc})") from None
    return VerifiedCopy(
        signer_code=code,
        signer_name=_known_name(code),
        signed_at=status.signer_reported_dt,
        issued_at=issued_at,
        operator=str(payload["operator"]),
        answer=answer,
        home_name=_known_name(answer.local_government_code),
    )


def _payload(reader: PdfFileReader) -> dict[str, Any]:
    """The signed contents (the JSON attachment)."""
    try:
        names = reader.root["/Names"]["/EmbeddedFiles"]["/Names"]
        found = [
            names[i + 1]["/EF"]["/F"].data
            for i in range(0, len(names) - 1, 2)
            if str(names[i]) == ATTACHMENT
        ]
    except (KeyError, TypeError, PdfError):
        found = []
    if len(found) != 1:
        raise CopyVerificationError(f"the signed PDF holds no {ATTACHMENT}: not a jukinet copy")
    try:
        payload = json.loads(found[0])
    except (UnicodeDecodeError, ValueError):
        raise CopyVerificationError(f"{ATTACHMENT} is not JSON") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CopyVerificationError(f"{ATTACHMENT} is not a {FORMAT} document")
    for key in ("issuer", "operator", "issued_at", "answer"):
        if key not in payload:
            raise CopyVerificationError(f"{ATTACHMENT} lacks {key}")
    return payload


# --- loading a node's signer --------------------------------------------------


@dataclass(frozen=True)
class DocumentSigner:
    """A node's document-signing key, its certificate and the chain to embed."""

    key: PrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]

    def sign(self, pdf: bytes) -> bytes:
        """:func:`sign_copy` with this signer."""
        return sign_copy(pdf, key=self.key, certificate=self.certificate, chain=self.chain)


def load_document_signer(key: Path, certificate: Path, ca: Path) -> DocumentSigner:
    """Read a node's ``document_key`` and ``document_certificate`` files and the CA;
    :class:`~jukinet.errors.ConfigError` with one line on any problem."""
    try:
        secret = serialization.load_pem_private_key(key.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate(certificate.read_bytes())
        root = x509.load_pem_x509_certificate(ca.read_bytes())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"document_key, document_certificate: {exc.filename}: not found "
            "(`jukinet pki federation` writes each municipality's beside its TLS files)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"document_key, document_certificate: cannot read: {exc}") from None
    if not isinstance(secret, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"document_key: {key}: not an EC key")
    try:
        pki.document_signer_code(cert)
    except ValueError as exc:
        raise ConfigError(f"document_certificate: {certificate}: {exc}") from None
    if cert.public_key() != secret.public_key():
        raise ConfigError(f"document_certificate: {certificate}: not the document key's")
    return DocumentSigner(secret, cert, (root,))


# --- small helpers ------------------------------------------------------------


def _municipality_name(code: str, field: str) -> str:
    government = localgov.lookup(code)
    if government is None:
        raise InvalidArgument(field, f"{code!r} is no known local government")
    return government.prefecture_name + government.name


def _known_name(code: str) -> str:
    government = localgov.lookup(code)
    return government.prefecture_name + government.name if government else code


def _instant(value: str, field: str) -> dt.datetime:
    try:
        at = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(field, f"{value!r} is not an RFC 3339 time") from None
    if at.utcoffset() is None:
        raise InvalidArgument(field, f"{value!r} carries no time zone")
    return at


def _rfc3339(at: dt.datetime) -> str:
    return at.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _jst(at: dt.datetime) -> str:
    j = at.astimezone(JST)
    return f"{j.year}年{j.month}月{j.day}日 {j.hour}時{j.minute:02d}分"


def _japanese_date(value: str, field: str) -> str:
    try:
        d = dt.date.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(field, f"{value!r} is not a date (YYYY-MM-DD)") from None
    return f"{d.year}年{d.month}月{d.day}日"
