r"""``jukinet copy``: the signed copy of a resident record (住民票の写し), made and checked offline.

    jukinet copy make answer.json --config municipality-131016.toml \
        --operator jukinet://operator/131016/t.tanaka --out copy.pdf
    jukinet copy verify copy.pdf [--ca pki/ca.pem]

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
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

from cryptography import x509
from google.protobuf import json_format

from jukinet import copydoc
from jukinet.config import MunicipalConfig, load_config
from jukinet.errors import ConfigError, InvalidArgument
from jukinet.v1 import relay_pb2

_PROG = "jukinet copy"


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


def register_cli(sub: Any) -> None:
    """Add ``copy make`` and ``copy verify`` to the ``jukinet`` parser."""
    group = sub.add_parser("copy", help="make or check a signed copy of a resident record")
    actions = group.add_subparsers(dest="copy_command", required=True)

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
