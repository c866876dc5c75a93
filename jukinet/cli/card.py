r"""``jukinet card``: operator IC cards, issued and revoked by the card administrator.

::

    jukinet card softhsm --dir cards --label t.tanaka [--pin-file F] [--so-pin-file F]
    jukinet card issue --pki pki --operator 312011/t.tanaka [--card t.tanaka] [--pin-file F]
    jukinet card show [--card t.tanaka] [--pin-file F]
    jukinet card revoke --pki pki --operator 312011/t.tanaka

Resident cards (住民基本台帳カード), at a counter terminal in an operator's
session (``jukinet login`` first; the usual ``--target``, ``--pki``, ``--as``)::

    jukinet card issue-resident --resident CODE [--card LABEL] [--pin-file F] [--so-pin-file F]
    jukinet card verify [--card LABEL] [--pin-file F]
    jukinet card unlock --card-id ID [--card LABEL] [--new-pin-file F]
    jukinet card revoke-resident --resident CODE --reason lost|stolen|returned

The resident at home, with the card in a reader (no node)::

    jukinet card sign-move-out --to CODE --date YYYY-MM-DD --address ADDRESS --out FILE
        [--card LABEL] [--pin-file F]

``sign-move-out`` writes a move-out filed by post (付記転出届): the card signs
the planned move after its PIN, and the file goes to the home municipality,
whose counter enters it (``jukinet resident move-out-by-post``).

``issue-resident`` makes the key pair on a blank card (initialised with the
resident's 4-digit PIN and the card maker's security officer PIN), has the
node sign its certificate with the municipality's resident card CA and
stores it on the card, with the card's new security officer PIN. ``verify``
is the proof of identity at any counter: the card signs the node's challenge
after its PIN. Three wrong PINs lock the card wherever it is used; ``unlock``
(a supervisor, at the issuing municipality) sets a new PIN. ``revoke-resident``
revokes a lost card: every node refuses it once the CRL reached it. The
resident's PIN comes from ``--pin-file``, ``JUKINET_RESIDENT_PIN`` or the
terminal, the new one of ``unlock`` from ``--new-pin-file``,
``JUKINET_NEW_RESIDENT_PIN`` or the terminal (twice).

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
import datetime as dt
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from jukinet import card as cards
from jukinet import cardclient, pki
from jukinet.cli.common import counter_options, plain, run_call
from jukinet.cli.counter import PIN_ENV, read_secret
from jukinet.clock import japan_date
from jukinet.errors import ConfigError
from jukinet.identity import Identity, Kind, parse_identity_uri
from jukinet.residentcard import armor_filing
from jukinet.v1 import card_pb2, card_pb2_grpc

SO_PIN_ENV = "JUKINET_CARD_SO_PIN"
RESIDENT_PIN_ENV = "JUKINET_RESIDENT_PIN"
NEW_RESIDENT_PIN_ENV = "JUKINET_NEW_RESIDENT_PIN"
CARD_SERVICE = "jukinet.v1.ResidentCardService"
_REASONS = {
    "lost": card_pb2.CARD_REVOCATION_REASON_LOST,
    "stolen": card_pb2.CARD_REVOCATION_REASON_STOLEN,
    "returned": card_pb2.CARD_REVOCATION_REASON_RETURNED,
}


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


# --- resident cards, at the counter ---------------------------------------------------


def _resident_pin(args: argparse.Namespace) -> str:
    return resident_pin(args.pin_file)


def _stub(channel: grpc.aio.Channel) -> Any:
    return card_pb2_grpc.ResidentCardServiceStub(channel)


async def _issue_resident(channel: grpc.aio.Channel, args: argparse.Namespace) -> Any:
    pin = _resident_pin(args)
    so_pin = read_secret(
        "blank card's security officer PIN",
        file=args.so_pin_file,
        env=SO_PIN_ENV,
        file_option="--so-pin-file",
    )
    issued = await cardclient.issue_card(
        _stub(channel), args.resident, pin=pin, so_pin=so_pin, label=args.card
    )
    cert = issued.certificate
    print(
        f"issued resident card {issued.card_id} to {args.resident} (serial "
        f"{cert.serial_number:x}, valid until {cert.not_valid_after_utc:%Y-%m-%d})"
    )
    return None


async def _verify(channel: grpc.aio.Channel, args: argparse.Namespace) -> Any:
    return await cardclient.prove_card(_stub(channel), pin=_resident_pin(args), label=args.card)


def resident_pin(pin_file: str | None) -> str:
    """The resident's card PIN: from ``pin_file``, else $JUKINET_RESIDENT_PIN, else asked."""
    return read_secret(
        "resident's card PIN", file=pin_file, env=RESIDENT_PIN_ENV, file_option="--pin-file"
    )


async def _unlock(channel: grpc.aio.Channel, args: argparse.Namespace) -> Any:
    new_pin = cards.check_resident_pin(
        read_secret(
            "resident's new card PIN",
            file=args.new_pin_file,
            env=NEW_RESIDENT_PIN_ENV,
            file_option="--new-pin-file",
            confirm=True,
        )
    )
    await cardclient.unlock_card(_stub(channel), args.card_id, new_pin, label=args.card)
    print(f"resident card {args.card_id} unlocked with its new PIN")
    return None


async def _revoke_resident(channel: grpc.aio.Channel, args: argparse.Namespace) -> Any:
    return await cardclient.revoke_card(_stub(channel), args.resident, _REASONS[args.reason])


def _counter_command(
    ops: Any, name: str, help: str, call: Any, flags: dict[str, str] | None = None
) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = ops.add_parser(name, help=help, description=help)
    counter_options(p)
    p.set_defaults(func=_friendly(lambda a: run_call(a, call, service=CARD_SERVICE, flags=flags)))
    return p


def _resident_card_commands(ops: Any) -> None:
    resident_flags = {"resident_code": "--resident", "public_key": "--card"}

    def card_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--card", metavar="LABEL", help="the card's label, when several are present")

    issue = _counter_command(
        ops,
        "issue-resident",
        "issue a resident card: key on the card, certificate from the municipal node",
        _issue_resident,
        resident_flags,
    )
    issue.add_argument("--resident", required=True, metavar="CODE", help="the resident code")
    card_option(issue)
    issue.add_argument("--pin-file", metavar="FILE", help=f"the PIN (else ${RESIDENT_PIN_ENV})")
    issue.add_argument(
        "--so-pin-file", metavar="FILE", help=f"the blank card's SO PIN (else ${SO_PIN_ENV})"
    )

    verify = _counter_command(
        ops, "verify", "a resident card's proof of identity, at any counter", _verify
    )
    card_option(verify)
    verify.add_argument("--pin-file", metavar="FILE", help=f"the PIN (else ${RESIDENT_PIN_ENV})")

    unlock = _counter_command(
        ops,
        "unlock",
        "unlock a resident card with a new PIN (a supervisor, at the issuing municipality)",
        _unlock,
        {"card_id": "--card-id"},
    )
    unlock.add_argument("--card-id", required=True, help="the card's id (32 hex digits)")
    card_option(unlock)
    unlock.add_argument(
        "--new-pin-file", metavar="FILE", help=f"the new PIN (else ${NEW_RESIDENT_PIN_ENV})"
    )

    revoke = _counter_command(
        ops,
        "revoke-resident",
        "revoke a resident's card (lost, stolen, returned); every node refuses it",
        _revoke_resident,
        {"resident_code": "--resident", "reason": "--reason"},
    )
    revoke.add_argument("--resident", required=True, metavar="CODE", help="the resident code")
    revoke.add_argument("--reason", required=True, choices=sorted(_REASONS))


def _cmd_sign_move_out(args: argparse.Namespace) -> int:
    pin = _resident_pin(args)

    def sign() -> str:
        signed = cardclient.sign_move_out(
            pin=pin,
            label=args.card,
            destination="" if args.abroad else args.to,
            planned=args.date,
            new_address=args.address,
            signed_on=japan_date(dt.datetime.now(dt.UTC)).isoformat(),
            abroad=args.abroad,
        )
        return armor_filing(signed)

    text = sign()
    try:
        Path(args.out).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--out: {args.out}: cannot write ({exc.strerror})") from None
    where = "abroad" if args.abroad else f"to {args.to}"
    print(f"move-out {where} on {args.date} signed by the card; post {args.out} to the counter")
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
    """Add ``card softhsm|issue|show|revoke`` and the resident card commands
    (``issue-resident|verify|unlock|revoke-resident``) to the ``jukinet`` parser."""
    group = sub.add_parser(
        "card",
        help="IC cards: operators' (issue, show, revoke) and residents' (at the counter)",
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

    post = ops.add_parser(
        "sign-move-out",
        help="the resident's card signs a move-out filed by post (付記転出届), into a file",
    )
    post.add_argument("--to", default="", metavar="CODE", help="local government code moved to")
    post.add_argument("--abroad", action="store_true", help="a move abroad (refused by post)")
    post.add_argument("--date", required=True, help="planned date of moving YYYY-MM-DD")
    post.add_argument("--address", default="", help="the new address")
    post.add_argument("--out", required=True, metavar="FILE", help="the filing file to post")
    post.add_argument("--card", metavar="LABEL", help="the card's label, when several are present")
    post.add_argument("--pin-file", metavar="FILE", help=f"the PIN (else ${RESIDENT_PIN_ENV})")
    post.set_defaults(func=_friendly(_cmd_sign_move_out))
    _resident_card_commands(ops)
