"""``jukinet resident``: change or show the register of a municipality."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from jukinet import card as cards
from jukinet import cardclient, movecert
from jukinet.cli.card import RESIDENT_PIN_ENV, resident_pin
from jukinet.cli.common import (
    PERSON_FLAGS,
    RELATIONSHIPS,
    SEX,
    Call,
    counter_options,
    print_message,
    run_call,
)
from jukinet.errors import ConfigError, JukinetError
from jukinet.residentcard import dearmor_filing
from jukinet.v1 import (
    card_pb2_grpc,
    common_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    provision_pb2,
)


def _person_options(parser: argparse.ArgumentParser, *, required: bool = True) -> None:
    parser.add_argument("--name", required=required, help="氏名, e.g. '鳥取 花子'")
    parser.add_argument("--kana", default="", help="reading in katakana")
    parser.add_argument("--former-surname", default="")
    parser.add_argument("--alias", default="")
    parser.add_argument("--birth-date", required=required, help="YYYY-MM-DD")
    parser.add_argument("--sex", choices=sorted(SEX), required=required)
    parser.add_argument("--address", required=required)


def _person(args: argparse.Namespace) -> municipal_pb2.PersonDetails:
    return municipal_pb2.PersonDetails(
        name=args.name,
        name_kana=args.kana,
        former_surname=args.former_surname,
        alias=args.alias,
        birth_date=args.birth_date,
        sex=SEX[args.sex] if args.sex else common_pb2.SEX_UNSPECIFIED,
        address=args.address,
    )


def _relationship(value: str | None) -> municipal_pb2.Relationship.ValueType:
    return RELATIONSHIPS[value] if value else municipal_pb2.RELATIONSHIP_UNSPECIFIED


def _register_options(parser: argparse.ArgumentParser, *, previous: bool = True) -> None:
    """The register-only items of a new entry (they never leave the municipality)."""
    parser.add_argument(
        "--relationship",
        choices=sorted(RELATIONSHIPS),
        help="relationship to the head of --household (続柄); founding one: its head",
    )
    if previous:
        parser.add_argument("--previous-address", default="", help="前住所")
    parser.add_argument("--domicile", default="", help="registered domicile (本籍)")
    parser.add_argument("--domicile-head", default="", help="head of the family register (筆頭者)")


def _register(args: argparse.Namespace) -> municipal_pb2.RegisterItems:
    return municipal_pb2.RegisterItems(
        relationship=_relationship(args.relationship),
        previous_address=getattr(args, "previous_address", ""),
        domicile=args.domicile,
        domicile_head=args.domicile_head,
    )


SERVICE = "jukinet.v1.MunicipalService"

# Fields of the requests below as the options that set them, for error messages.
FLAGS: dict[str, str] = {
    **PERSON_FLAGS,
    "resident_code": "the resident code",
    "effective_date": "--date",
    "date_of_death": "--date",
    "household_id": "--household",
    "new_address": "--address",
    "name": "--name",
    "name_kana": "--kana",
    "former_surname": "--former-surname",
    "destination_local_government_code": "--to",
    "previous_local_government_code": "--previous",
    "origin": "--origin",
    "ground": "--ground",
    "move_out_certificate": "--certificate",
    "register.relationship": "--relationship",
    "register.previous_address": "--previous-address",
    "register.domicile": "--domicile",
    "register.domicile_head": "--domicile-head",
    "relationship": "--relationship",
    "relationships": "--member",
    "domicile": "--domicile",
    "domicile_head": "--domicile-head",
}


BY_POST_FLAGS = {**FLAGS, "filing": "--filing"}
SPECIAL_FLAGS = {
    **FLAGS,
    "card_proof.card_certificate": "--card",
    "card_proof.signature": "--card",
    "card_proof.nonce": "--card",
    "person.address": "--address",
}


def _municipal(channel: grpc.aio.Channel) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
    return municipal_pb2_grpc.MunicipalServiceStub(channel)


def register_cli(sub: Any) -> None:
    """Add ``resident`` and its operations on a municipal register to the ``jukinet`` parser."""
    resident = sub.add_parser("resident", help="change or show the register of a municipality")
    ops = resident.add_subparsers(dest="op", required=True)
    for build in (
        _birth,
        _move_in,
        _relocate,
        _rename,
        _move_out,
        _move_out_by_post,
        _special_move_in,
        _reissue_certificate,
        _death,
        _change_code,
        _enter,
        _amend,
        _remove,
        _show,
        _household,
        _domicile,
        _status,
        _disclose,
        _unconfirmed,
    ):
        build(ops)


def _op(
    ops: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    call: Call,
    flags: dict[str, str] = FLAGS,
) -> argparse.ArgumentParser:
    """Add the subcommand ``name`` that makes ``call`` on the municipal node."""
    p: argparse.ArgumentParser = ops.add_parser(name, help=help, description=help)
    counter_options(p)
    p.set_defaults(func=lambda a: run_call(a, call, service=SERVICE, flags=flags))
    return p


def _birth(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident birth`` to ``ops``."""

    def birth(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).RegisterBirth(
            municipal_pb2.RegisterBirthRequest(
                person=_person(a), household_id=a.household, register=_register(a)
            )
        )

    p = _op(ops, "birth", "register a birth (出生)", birth)
    _person_options(p)
    _register_options(p, previous=False)
    p.add_argument("--household", default="", help="join this household (default: a new one)")


def read_certificate(path: str) -> common_pb2.SignedMoveOutCertificate:
    """The move-out certificate in the file at ``path`` (as ``move-out
    --certificate-out`` wrote it); a missing or damaged file is one line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--certificate: {path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--certificate: {path}: not a move-out certificate file") from None
    except OSError as exc:
        raise ConfigError(f"--certificate: {path}: cannot read ({exc.strerror})") from None
    try:
        return movecert.dearmor(text)
    except JukinetError as exc:
        raise ConfigError(f"--certificate: {path}: {exc}") from None


def write_certificate(path: str, certificate: common_pb2.SignedMoveOutCertificate) -> None:
    """Write ``certificate`` to ``path`` as a file a person can carry."""
    try:
        Path(path).write_text(movecert.armor(certificate), encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--certificate-out: {path}: cannot write ({exc.strerror})") from None


def _move_in(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident move-in`` to ``ops``."""

    def move_in(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        origin = {
            "domestic": municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC,
            "special": municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC_SPECIAL,
            "abroad": municipal_pb2.MOVE_IN_ORIGIN_ABROAD,
        }[a.origin]
        request = municipal_pb2.MoveInRequest(
            person=_person(a),
            origin=origin,
            resident_code=a.code,
            previous_local_government_code=a.previous,
            household_id=a.household,
            effective_date=a.date,
            register=_register(a),
        )
        if a.certificate:
            request.move_out_certificate.CopyFrom(read_certificate(a.certificate))
        return _municipal(ch).MoveIn(request)

    p = _op(
        ops,
        "move-in",
        "register a move in (転入, 特例転入, 国外からの転入); from another municipality it "
        "rests on the move-out certificate (--certificate), whose identity items are "
        "registered: give only the new address, the date and the household",
        move_in,
        {**FLAGS, "resident_code": "--code"},
    )
    _person_options(p, required=False)
    p.add_argument(
        "--origin",
        choices=["domestic", "special", "abroad"],
        default="domestic",
        help="domestic (転入, default), special (特例転入) or abroad (国外からの転入)",
    )
    p.add_argument(
        "--certificate",
        default="",
        metavar="FILE",
        help="the move-out certificate file of the old municipality (required unless "
        "--origin abroad)",
    )
    p.add_argument(
        "--code",
        default="",
        help="resident code (default: the certificate's; from abroad: a former code, if any)",
    )
    p.add_argument(
        "--previous",
        default="",
        help="local government code moved from (default: the certificate's issuer)",
    )
    p.add_argument("--household", default="", help="join this household (default: a new one)")
    p.add_argument("--date", required=True, help="effective date YYYY-MM-DD (the day of moving)")
    _register_options(p)


def _card_errors(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """``run``, with a card that cannot be used (wrong PIN, locked, absent) as one line."""

    def checked(a: argparse.Namespace) -> int:
        try:
            return run(a)
        except (cards.CardError, ConfigError) as exc:
            print(f"jukinet: {exc}", file=sys.stderr)
            return 2 if isinstance(exc, ConfigError) else 1

    return checked


def read_filing(path: str) -> municipal_pb2.SignedMoveOutFiling:
    """The move-out filing in the file at ``path`` (as ``card sign-move-out`` wrote it)."""
    try:
        return dearmor_filing(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"--filing: {path}: file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"--filing: {path}: not a move-out filing file") from None
    except OSError as exc:
        raise ConfigError(f"--filing: {path}: cannot read ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"--filing: {path}: {exc}") from None


def _move_out_by_post(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident move-out-by-post`` to ``ops``."""

    def by_post(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).MoveOutByPost(
            municipal_pb2.MoveOutByPostRequest(resident_code=a.code, filing=read_filing(a.filing))
        )

    p = _op(
        ops,
        "move-out-by-post",
        "enter a move-out filed by post with the resident card's signature (付記転出届): "
        "the move-out is recorded and its certificate kept for the new municipality",
        by_post,
        BY_POST_FLAGS,
    )
    p.add_argument("code", help="the resident code the filing names")
    p.add_argument("--filing", required=True, metavar="FILE", help="the posted filing file")
    p.set_defaults(func=_card_errors(lambda a: run_call(a, by_post, service=SERVICE, flags=FLAGS)))


def _special_move_in(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident special-move-in`` to ``ops``."""

    async def special(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        pin = resident_pin(a.pin_file)
        details = municipal_pb2.PersonDetails(address=a.address)
        return await cardclient.special_move_in(
            _municipal(ch),
            card_pb2_grpc.ResidentCardServiceStub(ch),
            municipal_pb2.SpecialMoveInRequest(
                effective_date=a.date,
                person=details,
                household_id=a.household,
                register=_register(a),
                continue_card=a.continue_card,
            ),
            pin=pin,
            label=a.card,
        )

    p = _op(
        ops,
        "special-move-in",
        "register a move in with the resident card and its PIN (特例転入) after a move-out "
        "filed by post: the move-out data comes from the old municipality over the network",
        special,
        SPECIAL_FLAGS,
    )
    p.add_argument("--card", metavar="LABEL", help="the card's label, when several are present")
    p.add_argument("--pin-file", metavar="FILE", help=f"the PIN (else ${RESIDENT_PIN_ENV})")
    p.add_argument("--date", required=True, help="effective date YYYY-MM-DD (the day of moving)")
    p.add_argument("--address", default="", help="the new address (default: the filing's)")
    p.add_argument("--household", default="", help="join this household (default: a new one)")
    p.add_argument(
        "--continue-card",
        action="store_true",
        help="continue the card here (継続利用): its certificate is renewed on the card",
    )
    _register_options(p)
    p.set_defaults(func=_card_errors(lambda a: run_call(a, special, service=SERVICE, flags=FLAGS)))


def _relocate(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident relocate`` to ``ops``."""

    def relocate(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).Relocate(
            municipal_pb2.RelocateRequest(
                resident_code=a.code,
                new_address=a.address,
                effective_date=a.date,
                whole_household=a.household,
            )
        )

    p = _op(ops, "relocate", "new address in the municipality (転居)", relocate)
    p.add_argument("code")
    p.add_argument("--address", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--household", action="store_true", help="move the whole household")


def _rename(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident rename`` to ``ops``."""

    def rename(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).ChangeName(
            municipal_pb2.ChangeNameRequest(
                resident_code=a.code,
                name=a.name,
                name_kana=a.kana,
                former_surname=a.former_surname,
                effective_date=a.date,
            )
        )

    p = _op(ops, "rename", "change of name (氏名変更)", rename)
    p.add_argument("code")
    p.add_argument("--name", required=True)
    p.add_argument("--kana", default="")
    p.add_argument("--former-surname", default="")
    p.add_argument("--date", required=True)


def _certificate_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--certificate-out",
        default="",
        metavar="FILE",
        help="write the signed move-out certificate to FILE, for move-in --certificate",
    )
    p.add_argument(
        "--format",
        choices=["document", "json"],
        default="document",
        help="document (default): the certificate as a person reads it; json: the answer",
    )


def _show_certificate(a: argparse.Namespace) -> Any:
    """Print an answer carrying a certificate, and write the certificate file."""

    def show(response: Any) -> None:
        certificate: common_pb2.SignedMoveOutCertificate = response.certificate
        issued = response.HasField("certificate")
        if a.format == "json" or not issued:
            print_message(response)
        else:
            body = common_pb2.MoveOutCertificate.FromString(certificate.certificate)
            print(movecert.document(body))
        if issued and a.certificate_out:
            try:
                write_certificate(a.certificate_out, certificate)
            except ConfigError as exc:
                # The change is made: say how to get the file after all.
                raise ConfigError(
                    f"{exc}; the certificate was issued: write it with "
                    f"`jukinet resident reissue-certificate {a.code} --certificate-out FILE`"
                ) from None

    return show


def _move_out(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident move-out`` to ``ops``."""

    def move_out(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).MoveOut(
            municipal_pb2.MoveOutRequest(
                resident_code=a.code,
                destination_local_government_code=a.to or "",
                abroad=a.abroad,
                effective_date=a.date,
            )
        )

    p = _op(
        ops,
        "move-out",
        "move out (転出, 国外転出); a move to another municipality issues the move-out "
        "certificate (転出証明書), printed as a document (a move abroad: the answer as JSON)",
        move_out,
    )
    p.add_argument("code")
    p.add_argument("--to", help="local government code moved to")
    p.add_argument("--abroad", action="store_true")
    p.add_argument("--date", required=True, help="planned date of moving YYYY-MM-DD")
    _certificate_options(p)
    p.set_defaults(
        func=lambda a: run_call(
            a, move_out, show=_show_certificate(a), service=SERVICE, flags=FLAGS
        )
    )


def _reissue_certificate(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident reissue-certificate`` to ``ops``."""

    def reissue(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).ReissueMoveOutCertificate(
            municipal_pb2.ReissueMoveOutCertificateRequest(resident_code=a.code)
        )

    p = _op(
        ops,
        "reissue-certificate",
        "the move-out certificate again (lost, or the node key renewed): the latest one of "
        "a resident who moved to another municipality, same number and contents, signed again",
        reissue,
    )
    p.add_argument("code")
    _certificate_options(p)
    p.set_defaults(
        func=lambda a: run_call(a, reissue, show=_show_certificate(a), service=SERVICE, flags=FLAGS)
    )


def _death(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident death`` to ``ops``."""

    def death(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).RecordDeath(
            municipal_pb2.RecordDeathRequest(resident_code=a.code, date_of_death=a.date)
        )

    p = _op(ops, "death", "record a death (死亡)", death)
    p.add_argument("code")
    p.add_argument("--date", required=True)


def _unconfirmed(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident unconfirmed`` to ``ops``."""

    def unconfirmed(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).ListUnconfirmedMoveOuts(
            municipal_pb2.ListUnconfirmedMoveOutsRequest(as_of=a.as_of or "")
        )

    p = _op(
        ops,
        "unconfirmed",
        "list move-outs the new municipality has not confirmed (転入通知) within the "
        "statutory period (planned move-out date + 14 days)",
        unconfirmed,
    )
    p.add_argument("--as-of", help="judge on this day (YYYY-MM-DD); default: today in Japan")


def _change_code(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident change-code`` to ``ops``."""

    def change_code(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).ChangeResidentCode(
            municipal_pb2.ChangeResidentCodeRequest(
                resident_code=a.code, ex_officio=a.ex_officio, effective_date=a.date
            )
        )

    p = _op(ops, "change-code", "give the resident a new code (住民票コード変更)", change_code)
    p.add_argument("code")
    p.add_argument("--ex-officio", action="store_true")
    p.add_argument("--date", required=True)


def _enter(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident enter`` to ``ops``."""

    def enter(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).EnterExOfficio(
            municipal_pb2.EnterExOfficioRequest(
                person=_person(a),
                household_id=a.household,
                effective_date=a.date,
                register=_register(a),
            )
        )

    p = _op(ops, "enter", "ex-officio entry (職権記載)", enter)
    _person_options(p)
    p.add_argument("--household", default="")
    p.add_argument("--date", required=True)
    _register_options(p)


def _amend(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident amend`` to ``ops``."""

    def amend(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).Amend(
            municipal_pb2.AmendRequest(
                resident_code=a.code, person=_person(a), effective_date=a.date
            )
        )

    p = _op(ops, "amend", "ex-officio correction (職権修正), all details", amend)
    p.add_argument("code")
    _person_options(p)
    p.add_argument("--date", required=True)


def _remove(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident remove`` to ``ops``."""

    def remove(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        ground = {
            "ex-officio": municipal_pb2.REMOVAL_GROUND_EX_OFFICIO,
            "missing": municipal_pb2.REMOVAL_GROUND_DECLARED_MISSING,
        }[a.ground]
        return _municipal(ch).RemoveExOfficio(
            municipal_pb2.RemoveExOfficioRequest(
                resident_code=a.code, ground=ground, effective_date=a.date
            )
        )

    p = _op(ops, "remove", "ex-officio removal (職権消除, 失踪宣告)", remove)
    p.add_argument("code")
    p.add_argument("--ground", choices=["ex-officio", "missing"], default="ex-officio")
    p.add_argument("--date", required=True)


def _show(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident show`` to ``ops``."""

    def show(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).GetResident(municipal_pb2.GetResidentRequest(resident_code=a.code))

    p = _op(ops, "show", "a register entry and its notifications", show)
    p.add_argument("code")


def _member(value: str) -> municipal_pb2.MemberRelationship:
    """``CODE=RELATIONSHIP`` of ``--member``."""
    code, _, relationship = value.partition("=")
    if relationship not in RELATIONSHIPS:
        raise argparse.ArgumentTypeError(
            f"{value!r}: give CODE=RELATIONSHIP, the relationship one of "
            + ", ".join(sorted(RELATIONSHIPS))
        )
    return municipal_pb2.MemberRelationship(
        resident_code=code, relationship=RELATIONSHIPS[relationship]
    )


def _household(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident household show`` and ``resident household change`` to ``ops``."""
    household = ops.add_parser("household", help="households (世帯): show or change")
    sub = household.add_subparsers(dest="household_op", required=True)

    def show(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        request = (
            municipal_pb2.GetHouseholdRequest(household_id=a.code)
            if a.by_id
            else municipal_pb2.GetHouseholdRequest(resident_code=a.code)
        )
        return _municipal(ch).GetHousehold(request)

    p = _op(sub, "show", "a household: its head, address and members with their 続柄", show)
    p.add_argument(
        "code", metavar="CODE", help="a resident code (their household); with --id a household id"
    )
    p.add_argument("--id", dest="by_id", action="store_true", help="target is a household id")

    def change(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).ChangeHousehold(
            municipal_pb2.ChangeHouseholdRequest(
                resident_code=a.code,
                household_id=a.household,
                new_household=a.new,
                relationship=_relationship(a.relationship),
                effective_date=a.date,
                relationships=a.member,
            )
        )

    p = _op(
        sub,
        "change",
        "世帯変更: join another household (--household), found one (--new), or change the "
        "relationship in one's own (head: restate the others with --member)",
        change,
    )
    p.add_argument("code")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--household", default="", help="join this household")
    target.add_argument("--new", action="store_true", help="found a new household as its head")
    p.add_argument("--relationship", choices=sorted(RELATIONSHIPS))
    p.add_argument(
        "--member",
        type=_member,
        action="append",
        default=[],
        metavar="CODE=RELATIONSHIP",
        help="with --relationship head: another member's relationship to the new head",
    )
    p.add_argument("--date", required=True)


def _domicile(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident domicile`` to ``ops``."""

    def domicile(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).ChangeDomicile(
            municipal_pb2.ChangeDomicileRequest(
                resident_code=a.code,
                domicile=a.domicile,
                domicile_head=a.domicile_head,
                effective_date=a.date,
            )
        )

    p = _op(ops, "domicile", "change of registered domicile (本籍) and its head (筆頭者)", domicile)
    p.add_argument("code")
    p.add_argument("--domicile", default="")
    p.add_argument("--domicile-head", default="")
    p.add_argument("--date", required=True)


def _status(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident status`` to ``ops``."""

    def status(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).GetStatus(municipal_pb2.GetMunicipalStatusRequest())

    _op(ops, "status", "the node's register, pool and delivery counts", status)


def _disclose(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident disclose``, printed as JSON or as a table for the resident."""

    def disclose(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).DiscloseProvisions(
            provision_pb2.DiscloseRequest(resident_code=a.code, with_proofs=a.proofs)
        )

    p = _op(
        ops,
        "disclose",
        "for the resident at the counter: their record as the national node holds it, "
        "and every provision of it (本人確認情報の提供状況の開示)",
        disclose,
    )
    p.add_argument("code")
    p.add_argument(
        "--format",
        choices=["json", "table"],
        default="json",
        help="json (default), or a table to print for the resident",
    )
    p.add_argument(
        "--proofs",
        action="store_true",
        help="with each provision's national log entry and its inclusion proof against "
        "a witnessed head (check them with `jukinet audit check-proof`)",
    )
    p.add_argument(
        "--out",
        metavar="FILE",
        help="write the disclosure to FILE as JSON (for `jukinet audit check-proof`)",
    )

    def show(a: argparse.Namespace) -> Callable[[provision_pb2.DiscloseResponse], None]:
        if a.out:
            return lambda response: _write_disclosure(a.out, response)
        return print_message if a.format == "json" else _print_disclosure

    p.set_defaults(func=lambda a: run_call(a, disclose, show=show(a), service=SERVICE, flags=FLAGS))


def _write_disclosure(path: str, response: provision_pb2.DiscloseResponse) -> None:
    """Write the disclosure as protobuf JSON (the file ``jukinet audit check-proof`` reads)."""
    text = json_format.MessageToJson(response, preserving_proto_field_name=True, indent=2)
    Path(path).write_text(text + "\n", encoding="utf-8")
    print(
        f"wrote {len(response.provisions)} provisions, {len(response.proofs)} with proofs, "
        f"to {path}"
    )


def _print_disclosure(response: provision_pb2.DiscloseResponse) -> None:
    from gateway.disclosure import format_disclosure

    print(format_disclosure(response))
