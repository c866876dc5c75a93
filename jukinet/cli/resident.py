"""``jukinet resident``: change or show the register of a municipality."""

from __future__ import annotations

import argparse
from typing import Any

import grpc

from jukinet.cli.common import (
    PERSON_FLAGS,
    SEX,
    Call,
    connection_options,
    print_message,
    run_call,
)
from jukinet.v1 import municipal_pb2, municipal_pb2_grpc, provision_pb2


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
        sex=SEX[args.sex],
        address=args.address,
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
        _death,
        _change_code,
        _enter,
        _amend,
        _remove,
        _show,
        _status,
        _disclose,
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
    connection_options(p)
    p.set_defaults(func=lambda a: run_call(a, call, service=SERVICE, flags=flags))
    return p


def _birth(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident birth`` to ``ops``."""

    def birth(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).RegisterBirth(
            municipal_pb2.RegisterBirthRequest(person=_person(a), household_id=a.household)
        )

    p = _op(ops, "birth", "register a birth (出生)", birth)
    _person_options(p)
    p.add_argument("--household", default="", help="join this household (default: a new one)")


def _move_in(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident move-in`` to ``ops``."""

    def move_in(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        origin = {
            "domestic": municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC,
            "special": municipal_pb2.MOVE_IN_ORIGIN_DOMESTIC_SPECIAL,
            "abroad": municipal_pb2.MOVE_IN_ORIGIN_ABROAD,
        }[a.origin]
        return _municipal(ch).MoveIn(
            municipal_pb2.MoveInRequest(
                person=_person(a),
                origin=origin,
                resident_code=a.code,
                previous_local_government_code=a.previous,
                household_id=a.household,
                effective_date=a.date,
            )
        )

    p = _op(
        ops,
        "move-in",
        "register a move in (転入, 特例転入, 国外からの転入)",
        move_in,
        {**FLAGS, "resident_code": "--code"},
    )
    _person_options(p)
    p.add_argument("--origin", choices=["domestic", "special", "abroad"], default="domestic")
    p.add_argument("--code", default="", help="resident code (required from another municipality)")
    p.add_argument("--previous", default="", help="local government code moved from")
    p.add_argument("--household", default="")
    p.add_argument("--date", required=True, help="effective date YYYY-MM-DD")


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

    p = _op(ops, "move-out", "move out (転出, 国外転出)", move_out)
    p.add_argument("code")
    p.add_argument("--to", help="local government code moved to")
    p.add_argument("--abroad", action="store_true")
    p.add_argument("--date", required=True)


def _death(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident death`` to ``ops``."""

    def death(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).RecordDeath(
            municipal_pb2.RecordDeathRequest(resident_code=a.code, date_of_death=a.date)
        )

    p = _op(ops, "death", "record a death (死亡)", death)
    p.add_argument("code")
    p.add_argument("--date", required=True)


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
                person=_person(a), household_id=a.household, effective_date=a.date
            )
        )

    p = _op(ops, "enter", "ex-officio entry (職権記載)", enter)
    _person_options(p)
    p.add_argument("--household", default="")
    p.add_argument("--date", required=True)


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


def _status(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident status`` to ``ops``."""

    def status(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).GetStatus(municipal_pb2.GetMunicipalStatusRequest())

    _op(ops, "status", "the node's register, pool and delivery counts", status)


def _disclose(ops: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``resident disclose``, printed as JSON or as a table for the resident."""

    def disclose(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).DiscloseProvisions(
            provision_pb2.DiscloseRequest(resident_code=a.code)
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
    p.set_defaults(
        func=lambda a: run_call(
            a,
            disclose,
            show=print_message if a.format == "json" else _print_disclosure,
            service=SERVICE,
            flags=FLAGS,
        )
    )


def _print_disclosure(response: provision_pb2.DiscloseResponse) -> None:
    from gateway.disclosure import format_disclosure

    print(format_disclosure(response))
