r"""``jukinet copy``: the signed copy of a resident record (住民票の写し): issued at the
counter for a resident of any municipality (広域交付), made and checked offline.

    jukinet copy issue --applicant CODE [--home LG-CODE] [--member CODE ...] \
        [--relationship] [--resident-code] (--photo-id | --card [LABEL]) --out copy.pdf
    jukinet copy make answer.json --config municipality-131016.toml \
        --operator jukinet://operator/131016/t.tanaka --out copy.pdf
    jukinet copy verify copy.pdf [--ca pki/ca.pem]

``issue`` runs at a counter terminal in an operator's session (``jukinet
login``; ``--target``, ``--as``, ``--session`` as for every counter command):
the node asks the applicant's home municipality (``--home``; with ``--card``
the card's municipality by default) for the entries of the applicant
(or of the household members given with ``--member``, the applicant's own
code among them if wanted), with the relationship (``--relationship``) and
the resident code (``--resident-code``) only when asked, and answers the
copy signed with its document-signing key. ``--photo-id``: the operator has
seen the applicant's photo ID; ``--card``: the applicant's resident card
proves their identity here (its PIN from ``--pin-file``,
``$JUKINET_RESIDENT_PIN`` or asked). The copy is written to ``--out`` and
checked as ``verify`` checks it (against ``ca.pem`` in ``--pki``).

``make`` prints the copy of a ``CopyAnswer`` (JSON, as the home
municipality answers it) as the municipality of ``--config`` issues it,
signed with its document-signing key (``document_key``,
``document_certificate``) and printed with its fonts (``copy_font_mincho``,
``copy_font_gothic``). ``verify`` prints who signed the copy (municipality
and code), when, and what it says; on a copy that does not verify it prints
one line on stderr and exits 1; a usage or file problem exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from google.protobuf import json_format

from jukinet import cardclient, copydoc
from jukinet.cli.card import resident_pin
from jukinet.cli.common import counter_options, run_call
from jukinet.config import MunicipalConfig, load_config
from jukinet.errors import ConfigError, InvalidArgument
from jukinet.v1 import card_pb2_grpc, municipal_pb2, municipal_pb2_grpc, relay_pb2

_PROG = "jukinet copy"
_SERVICE = "jukinet.v1.MunicipalService"
_FLAGS = {
    "resident_code": "--applicant",
    "home_local_government_code": "--home",
    "member_resident_codes": "--member",
    "card_proof": "--card",
}


def verify_file(path: str, ca: str) -> copydoc.VerifiedCopy:
    """Verify the copy at ``path`` against the root CA certificate at ``ca``.

    :class:`~jukinet.errors.ConfigError` for a file that cannot be read,
    :class:`~jukinet.copydoc.CopyVerificationError` for a copy that does not verify.
    """
    try:
        root = x509.load_pem_x509_certificate(Path(ca).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--ca {ca}: not a readable PEM certificate ({exc})") from None
    try:
        pdf = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
    return copydoc.verify_copy(pdf, ca=root)


def make_file(answer_path: str, config_path: str, operator: str, out: str) -> Path:
    """Render and sign the copy of the answer at ``answer_path``; the file written."""
    config = load_config(MunicipalConfig, config_path)
    try:
        text = Path(answer_path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {answer_path}: {exc}") from None
    answer = relay_pb2.CopyAnswer()
    try:
        json_format.Parse(text, answer)
    except json_format.ParseError as exc:
        raise ConfigError(f"{answer_path} is not a CopyAnswer: {exc}") from None
    fonts = copydoc.Fonts.load(config.copy_font_mincho, config.copy_font_gothic)
    signer = copydoc.load_document_signer(*config.document_files(), Path(config.tls.ca))
    pdf = copydoc.render_copy(
        answer,
        issuer=config.local_government_code,
        operator=operator,
        issued_at=dt.datetime.now(dt.UTC),
        fonts=fonts,
    )
    target = Path(out)
    try:
        target.write_bytes(signer.sign(pdf))
    except OSError as exc:
        raise ConfigError(f"cannot write {out}: {exc.strerror or exc}") from None
    return target


async def _issue(channel: grpc.aio.Channel, args: argparse.Namespace) -> list[str]:
    """Ask the node for the copy, write it, check it; the lines to print."""
    try:
        root = x509.load_pem_x509_certificate((Path(args.pki) / "ca.pem").read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--pki {args.pki}: no readable ca.pem ({exc})") from None
    request = municipal_pb2.IssueCopyRequest(
        resident_code=args.applicant,
        home_local_government_code=args.home or "",
        member_resident_codes=args.member or [],
        include_relationship=args.relationship,
        include_resident_code=args.resident_code,
    )
    if args.card is None:
        request.identification = municipal_pb2.APPLICANT_IDENTIFICATION_PHOTO_ID
    else:
        request.identification = municipal_pb2.APPLICANT_IDENTIFICATION_RESIDENT_CARD
        request.card_proof.CopyFrom(
            await cardclient.card_proof(
                card_pb2_grpc.ResidentCardServiceStub(channel),
                pin=resident_pin(args.pin_file),
                label=args.card or None,
            )
        )
    stub = municipal_pb2_grpc.MunicipalServiceStub(channel)
    answer: municipal_pb2.IssueCopyResponse = await stub.IssueCopy(request, timeout=60)
    target = Path(args.out)
    try:
        await asyncio.to_thread(target.write_bytes, answer.document)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.out}: {exc.strerror or exc}") from None
    try:
        verified = await asyncio.to_thread(copydoc.verify_copy, answer.document, ca=root)
    except copydoc.CopyVerificationError as exc:
        return [f"wrote {target}, which does NOT verify: {exc}"]
    return [f"wrote {target} (request {answer.request_id}); it verifies:", *verified.describe()]


def _add_issue(actions: Any) -> None:
    issue = actions.add_parser(
        "issue",
        help="issue a copy at the counter for a resident of any municipality (広域交付)",
        description="Issue a signed copy of a resident record for a resident of any "
        "municipality: the contents come from the home municipality over the network.",
    )
    counter_options(issue)
    issue.add_argument("--applicant", required=True, metavar="CODE", help="the applicant's code")
    issue.add_argument(
        "--home",
        metavar="LG-CODE",
        help="the applicant's home municipality (default with --card: the card's)",
    )
    issue.add_argument(
        "--member",
        action="append",
        metavar="CODE",
        help="a household member whose entry the copy shows (repeat; default: the applicant)",
    )
    issue.add_argument("--relationship", action="store_true", help="show the relationship (続柄)")
    issue.add_argument(
        "--resident-code", action="store_true", help="show the resident codes (住民票コード)"
    )
    how = issue.add_mutually_exclusive_group(required=True)
    how.add_argument("--photo-id", action="store_true", help="the operator saw a photo ID")
    how.add_argument(
        "--card",
        nargs="?",
        const="",
        metavar="LABEL",
        help="the applicant's resident card proves their identity (its label if several)",
    )
    issue.add_argument("--pin-file", metavar="FILE", help="the card PIN's file (with --card)")
    issue.add_argument("--out", required=True, metavar="FILE.pdf", help="the PDF to write")

    def show(lines: list[str]) -> None:
        print("\n".join(lines))

    def do_issue(a: argparse.Namespace) -> int:
        return run_call(a, _issue, show, service=_SERVICE, flags=_FLAGS)

    issue.set_defaults(func=do_issue)


def register_cli(sub: Any) -> None:
    """Add ``copy issue``, ``copy make`` and ``copy verify`` to the ``jukinet`` parser."""
    group = sub.add_parser(
        "copy", help="issue, make or check a signed copy of a resident record (住民票の写し)"
    )
    actions = group.add_subparsers(dest="copy_command", required=True)
    _add_issue(actions)

    verify = actions.add_parser("verify", help="check a signed copy offline")
    verify.add_argument("file", help="the copy (PDF)")
    verify.add_argument(
        "--ca",
        default=str(Path(os.environ.get("JUKINET_PKI", "pki")) / "ca.pem"),
        help="the federation's root CA certificate (default: ca.pem in the PKI folder)",
    )

    def do_verify(a: argparse.Namespace) -> int:
        try:
            verified = verify_file(a.file, a.ca)
        except ConfigError as exc:
            print(f"{_PROG}: {exc}", file=sys.stderr)
            return 2
        except copydoc.CopyVerificationError as exc:
            print(f"{_PROG}: {a.file}: NOT VALID: {exc}", file=sys.stderr)
            return 1
        print("\n".join(verified.describe()))
        return 0

    verify.set_defaults(func=do_verify)

    make = actions.add_parser("make", help="print and sign a copy from a CopyAnswer (JSON)")
    make.add_argument("answer", help="the home municipality's CopyAnswer, as JSON")
    make.add_argument("--config", required=True, help="the issuing municipality's node config")
    make.add_argument("--operator", required=True, help="who issues it (name or identity URI)")
    make.add_argument("--out", required=True, help="the PDF to write")

    def do_make(a: argparse.Namespace) -> int:
        try:
            written = make_file(a.answer, a.config, a.operator, a.out)
        except (ConfigError, InvalidArgument, ValueError) as exc:
            print(f"{_PROG}: {exc}", file=sys.stderr)
            return 2
        print(f"wrote {written}")
        return 0

    make.set_defaults(func=do_make)
