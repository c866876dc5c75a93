r"""``jukinet card``: operator IC cards, issued and revoked by the card administrator.

::

    jukinet card softhsm --dir cards --label t.tanaka [--pin-file F] [--so-pin-file F]
    jukinet card issue --pki pki --operator 312011/t.tanaka [--card t.tanaka] [--pin-file F]
    jukinet card show [--card t.tanaka] [--pin-file F]
    jukinet card revoke --pki pki --operator 312011/t.tanaka

``issue`` generates the operator's key pair on a blank card (it never leaves
the card), has the organisation's operator CA (``<pki>/operator-ca-<org>/``)
certify it and stores the certificate on the card; ``--force`` replaces (and
revokes) an earlier certificate of that operator. ``revoke`` puts the card's
certificate on the operator CA's CRL: the node refuses the card at the next
login (``card-revoked``). ``show`` unlocks the card and prints whose it is.

The card is read through PKCS#11 (``JUKINET_PKCS11_MODULE``, else SoftHSM2).
``softhsm`` makes a blank software card for tests and trials: it writes a
SoftHSM2 configuration in ``--dir`` (if none is there), initialises a token
labelled ``--label`` with the PIN (``--pin-file``, ``JUKINET_CARD_PIN`` or
asked) and the security officer's PIN (``--so-pin-file``,
``JUKINET_CARD_SO_PIN`` or asked), and prints the ``SOFTHSM2_CONF`` line to
export so that every later command sees it.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from jukinet import card as cards
from jukinet import pki
from jukinet.cli.common import plain
from jukinet.cli.counter import PIN_ENV, read_secret
from jukinet.errors import ConfigError
from jukinet.identity import Identity, Kind, parse_identity_uri

SO_PIN_ENV = "JUKINET_CARD_SO_PIN"


def operator_identity(text: str) -> Identity:
    """``312011/t.tanaka`` or ``jukinet://operator/312011/t.tanaka`` as an identity."""
    uri = text if text.startswith("jukinet://") else f"jukinet://operator/{text}"
    try:
        identity = parse_identity_uri(uri)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    if identity.kind is not Kind.OPERATOR:
        raise argparse.ArgumentTypeError(f"{text!r}: not an operator (give ORG/ID)")
    return identity


def _pin(args: argparse.Namespace) -> str:
    return read_secret("card PIN", file=args.pin_file, env=PIN_ENV, file_option="--pin-file")


def _cmd_issue(args: argparse.Namespace) -> int:
    identity: Identity = args.operator
    lib = cards.load_module()
    cards.find_card(lib, args.card)
    cert = cards.provision_card(
        lib,
        _pin(args),
        lambda key: pki.issue_card_certificate(args.pki, identity, key, force=args.force),
        label=args.card,
    )
    print(
        f"issued the card of {identity.uri} (certificate serial {cert.serial_number:x}, "
        f"valid until {cert.not_valid_after_utc:%Y-%m-%d}) by "
        f"{pki.operator_ca_dir(args.pki, identity.org)}"
    )
    return 0


def _cmd_revoke(args: argparse.Namespace) -> int:
    identity: Identity = args.operator
    serial = pki.revoke_card(args.pki, identity)
    where = pki.operator_ca_dir(args.pki, identity.org) / pki.CRL_FILE
    print(f"revoked the card of {identity.uri} (serial {serial:x}) in {where}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    with cards.open_card(cards.load_module(), _pin(args), label=args.card) as card:
        cert = card.certificate
        print(
            f"card {card.label!r}: {card.identity.uri}, certificate serial "
            f"{cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d}"
        )
    return 0


def _cmd_softhsm(args: argparse.Namespace) -> int:
    directory = Path(args.dir).resolve()
    config = directory / "softhsm2.conf"
    hsm = (
        cards.SoftHsm(config, directory / "tokens")
        if config.exists()
        else cards.SoftHsm.create(directory)
    )
    pin = _pin(args)
    so_pin = read_secret(
        "security officer PIN", file=args.so_pin_file, env=SO_PIN_ENV, file_option="--so-pin-file"
    )
    hsm.init_token(args.label, so_pin, pin)
    print(f"blank card {args.label!r} in {hsm.tokendir}; for every later command:")
    print(f"export SOFTHSM2_CONF={hsm.config}")
    return 0


def _friendly(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
        except (cards.CardError, ConfigError, ValueError, OSError) as exc:
            print(f"jukinet card: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1
        return result

    return run


def register_cli(sub: Any) -> None:
    """Add ``card softhsm|issue|show|revoke`` to the ``jukinet`` parser."""
    group = sub.add_parser(
        "card",
        help="operator IC cards: issue, show, revoke",
        description=plain(__doc__ or ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ops = group.add_subparsers(dest="card_command", required=True)
    pki_default = os.environ.get("JUKINET_PKI", "pki")

    def card_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--card", metavar="LABEL", help="the card's label, when several are present")
        p.add_argument("--pin-file", metavar="FILE", help=f"the PIN's file (else ${PIN_ENV})")

    issue = ops.add_parser("issue", help="key on the card, certificate from the operator CA")
    issue.add_argument("--pki", type=Path, default=Path(pki_default), help="PKI folder")
    issue.add_argument("--operator", type=operator_identity, required=True, metavar="ORG/ID")
    issue.add_argument(
        "--force", action="store_true", help="replace the operator's certificate (revokes it)"
    )
    card_options(issue)
    issue.set_defaults(func=_friendly(_cmd_issue))

    show = ops.add_parser("show", help="whose card is in the reader")
    card_options(show)
    show.set_defaults(func=_friendly(_cmd_show))

    revoke = ops.add_parser("revoke", help="revoke an operator's card in the operator CA's CRL")
    revoke.add_argument("--pki", type=Path, default=Path(pki_default), help="PKI folder")
    revoke.add_argument("--operator", type=operator_identity, required=True, metavar="ORG/ID")
    revoke.set_defaults(func=_friendly(_cmd_revoke))

    soft = ops.add_parser("softhsm", help="a blank SoftHSM2 card, for tests and trials")
    soft.add_argument("--dir", required=True, help="the SoftHSM2 folder (made if needed)")
    soft.add_argument("--label", required=True, help="the new card's label (1-32 characters)")
    soft.add_argument("--pin-file", metavar="FILE", help=f"the PIN's file (else ${PIN_ENV})")
    soft.add_argument(
        "--so-pin-file",
        metavar="FILE",
        help=f"the security officer PIN's file (else ${SO_PIN_ENV})",
    )
    soft.set_defaults(func=_friendly(_cmd_softhsm))
