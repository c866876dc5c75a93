"""The ``jukinet`` command: certificates, nodes, the register, agencies, and the demo.

    jukinet pki federation --dir pki --municipality 312011 --operators --agency nenkin
    jukinet run municipal --config municipality-312011.toml
    jukinet resident birth --target 127.0.0.1:50311 --pki pki --as operator-312011-admin \\
        --name "鳥取 花子" --kana "トットリ ハナコ" --birth-date 2026-11-01 --sex female \\
        --address "鳥取県鳥取市東町1丁目1番1号"
    jukinet resident disclose 12345678903 --format table --target 127.0.0.1:50311 \\
        --pki pki --as operator-312011-admin
    jukinet identity show 12345678903 --tier national --target 127.0.0.1:50100 \\
        --pki pki --as operator-national-admin
    jukinet agency verify --purpose NENKIN-EXISTENCE-CHECK --code 12345678903 \\
        --target 127.0.0.1:50400 --pki pki --as agency-nenkin
    jukinet agency retrieve 12345678903 --purpose NENKIN-ADDRESS-CHANGE --as-of 2025-04-01 ...
    jukinet agency search --purpose MOFA-PASSPORT-ISSUE --name "髙橋 一郎" \\
        --birth-date 1970-01-01 --max 3 --target 127.0.0.1:50400 --pki pki --as agency-mofa-passport
    jukinet agency verify-batch recipients.csv --purpose NENKIN-EXISTENCE-CHECK \\
        --out results.jsonl ...
    jukinet import register.csv --target ... --pki pki --as operator-312011-admin
    jukinet demo

Connection options may come from JUKINET_TARGET, JUKINET_PKI and JUKINET_AS.
Output is JSON (``agency verify-batch``: one JSON line per row; ``resident
disclose --format table``: a table to print for the resident); errors are one
line on stderr with the gRPC status and its reason, and a non-zero exit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from jukinet import pki
from jukinet.client import connect, describe_error
from jukinet.errors import ConfigError
from jukinet.v1 import (
    delivery_pb2,
    municipal_pb2,
    municipal_pb2_grpc,
    national_pb2_grpc,
    prefecture_pb2_grpc,
    provision_pb2,
)

SEX = {"male": 1, "female": 2}


def _print(message: Message, *, all_fields: bool = False) -> None:
    """``message`` as indented JSON; ``all_fields`` also prints false, zero and empty ones."""
    print(
        json.dumps(
            json_format.MessageToDict(
                message,
                preserving_proto_field_name=True,
                always_print_fields_with_no_presence=all_fields,
            ),
            ensure_ascii=False,
            indent=2,
        )
    )


def _connection_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument("--target", default=env.get("JUKINET_TARGET"), help="host:port of the node")
    parser.add_argument("--pki", default=env.get("JUKINET_PKI", "pki"), help="PKI folder")
    parser.add_argument(
        "--as",
        dest="identity",
        default=env.get("JUKINET_AS"),
        help="certificate name in the PKI folder, e.g. operator-312011-admin",
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
        sex=SEX[args.sex],  # type: ignore[arg-type]
        address=args.address,
    )


# Stub calls are typed loosely by the generated stubs; each returns a response message.
Call = Callable[[grpc.aio.Channel, argparse.Namespace], Any]


def _run_call(args: argparse.Namespace, call: Call, show: Callable[[Any], None] = _print) -> int:
    if not args.target or not args.identity:
        print(
            "jukinet: --target and --as are required (or JUKINET_TARGET / JUKINET_AS)",
            file=sys.stderr,
        )
        return 2

    async def go() -> int:
        channel = connect(args.target, args.pki, args.identity)
        try:
            result = await call(channel, args)
        except grpc.aio.AioRpcError as exc:
            print(f"jukinet: {describe_error(exc)}", file=sys.stderr)
            return 1
        finally:
            await channel.close(grace=None)
        if result is not None:
            show(result)
        return 0

    try:
        return asyncio.run(go())
    except ConfigError as exc:
        print(f"jukinet: {exc}", file=sys.stderr)
        return 2


def _municipal(channel: grpc.aio.Channel) -> municipal_pb2_grpc.MunicipalServiceAsyncStub:
    return municipal_pb2_grpc.MunicipalServiceStub(channel)


def _resident_commands(sub: Any) -> None:
    resident = sub.add_parser("resident", help="change or show the register of a municipality")
    ops = resident.add_subparsers(dest="op", required=True)

    def op(name: str, help: str, call: Call) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = ops.add_parser(name, help=help)
        _connection_options(p)
        p.set_defaults(func=lambda a: _run_call(a, call))
        return p

    def birth(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).RegisterBirth(
            municipal_pb2.RegisterBirthRequest(person=_person(a), household_id=a.household)
        )

    p = op("birth", "register a birth (出生)", birth)
    _person_options(p)
    p.add_argument("--household", default="", help="join this household (default: a new one)")

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

    p = op("move-in", "register a move in (転入, 特例転入, 国外からの転入)", move_in)
    _person_options(p)
    p.add_argument("--origin", choices=["domestic", "special", "abroad"], default="domestic")
    p.add_argument("--code", default="", help="resident code (required from another municipality)")
    p.add_argument("--previous", default="", help="local government code moved from")
    p.add_argument("--household", default="")
    p.add_argument("--date", required=True, help="effective date YYYY-MM-DD")

    def relocate(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).Relocate(
            municipal_pb2.RelocateRequest(
                resident_code=a.code,
                new_address=a.address,
                effective_date=a.date,
                whole_household=a.household,
            )
        )

    p = op("relocate", "new address in the municipality (転居)", relocate)
    p.add_argument("code")
    p.add_argument("--address", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--household", action="store_true", help="move the whole household")

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

    p = op("rename", "change of name (氏名変更)", rename)
    p.add_argument("code")
    p.add_argument("--name", required=True)
    p.add_argument("--kana", default="")
    p.add_argument("--former-surname", default="")
    p.add_argument("--date", required=True)

    def move_out(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).MoveOut(
            municipal_pb2.MoveOutRequest(
                resident_code=a.code,
                destination_local_government_code=a.to or "",
                abroad=a.abroad,
                effective_date=a.date,
            )
        )

    p = op("move-out", "move out (転出, 国外転出)", move_out)
    p.add_argument("code")
    p.add_argument("--to", help="local government code moved to")
    p.add_argument("--abroad", action="store_true")
    p.add_argument("--date", required=True)

    def death(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).RecordDeath(
            municipal_pb2.RecordDeathRequest(resident_code=a.code, date_of_death=a.date)
        )

    p = op("death", "record a death (死亡)", death)
    p.add_argument("code")
    p.add_argument("--date", required=True)

    def change_code(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).ChangeResidentCode(
            municipal_pb2.ChangeResidentCodeRequest(
                resident_code=a.code, ex_officio=a.ex_officio, effective_date=a.date
            )
        )

    p = op("change-code", "give the resident a new code (住民票コード変更)", change_code)
    p.add_argument("code")
    p.add_argument("--ex-officio", action="store_true")
    p.add_argument("--date", required=True)

    def enter(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).EnterExOfficio(
            municipal_pb2.EnterExOfficioRequest(
                person=_person(a), household_id=a.household, effective_date=a.date
            )
        )

    p = op("enter", "ex-officio entry (職権記載)", enter)
    _person_options(p)
    p.add_argument("--household", default="")
    p.add_argument("--date", required=True)

    def amend(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).Amend(
            municipal_pb2.AmendRequest(
                resident_code=a.code, person=_person(a), effective_date=a.date
            )
        )

    p = op("amend", "ex-officio correction (職権修正), all details", amend)
    p.add_argument("code")
    _person_options(p)
    p.add_argument("--date", required=True)

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

    p = op("remove", "ex-officio removal (職権消除, 失踪宣告)", remove)
    p.add_argument("code")
    p.add_argument("--ground", choices=["ex-officio", "missing"], default="ex-officio")
    p.add_argument("--date", required=True)

    def show(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).GetResident(municipal_pb2.GetResidentRequest(resident_code=a.code))

    p = op("show", "a register entry and its notifications", show)
    p.add_argument("code")

    def status(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).GetStatus(municipal_pb2.GetMunicipalStatusRequest())

    op("status", "the node's register, pool and delivery counts", status)

    def disclose(ch: grpc.aio.Channel, a: argparse.Namespace) -> Any:
        return _municipal(ch).DiscloseProvisions(
            provision_pb2.DiscloseRequest(resident_code=a.code)
        )

    p = op(
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
        func=lambda a: _run_call(
            a, disclose, show=_print if a.format == "json" else _print_disclosure
        )
    )


def _print_disclosure(response: provision_pb2.DiscloseResponse) -> None:
    from gateway.disclosure import format_disclosure

    print(format_disclosure(response))


def _upper_stub(channel: grpc.aio.Channel, tier: str) -> Any:
    if tier == "national":
        return national_pb2_grpc.NationalServiceStub(channel)
    return prefecture_pb2_grpc.PrefectureServiceStub(channel)


def _identity_commands(sub: Any) -> None:
    identity = sub.add_parser("identity", help="records held by a prefecture or the national node")
    ops = identity.add_subparsers(dest="op", required=True)

    show = ops.add_parser("show", help="one record as held, with its history")
    _connection_options(show)
    show.add_argument("code")
    show.add_argument("--tier", choices=["prefecture", "national"], required=True)

    async def do_show(ch: grpc.aio.Channel, a: argparse.Namespace) -> Message:
        response: Message = await _upper_stub(ch, a.tier).GetIdentity(
            delivery_pb2.GetIdentityRequest(resident_code=a.code)
        )
        return response

    show.set_defaults(func=lambda a: _run_call(a, do_show))

    status = ops.add_parser("status", help="delivery cursors and counts")
    _connection_options(status)
    status.add_argument("--tier", choices=["prefecture", "national"], required=True)

    async def do_status(ch: grpc.aio.Channel, a: argparse.Namespace) -> Message:
        response: Message = await _upper_stub(ch, a.tier).GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest()
        )
        return response

    status.set_defaults(func=lambda a: _run_call(a, do_status))


def _run_commands(sub: Any) -> None:
    run = sub.add_parser("run", help="run a node from a config file")
    run.add_argument("tier", choices=["national", "prefecture", "municipal", "gateway"])
    run.add_argument("--config", help="TOML config file")

    def go(a: argparse.Namespace) -> int:
        from jukinet.config import MunicipalConfig, NationalConfig, PrefectureConfig
        from jukinet.noderun import run_node

        argv = ["--config", a.config] if a.config else []
        if a.tier == "national":
            from services.national.app import NationalApp

            return run_node("national", NationalConfig, NationalApp, argv)
        if a.tier == "prefecture":
            from services.prefecture.app import PrefectureApp

            return run_node("prefecture", PrefectureConfig, PrefectureApp, argv)
        if a.tier == "gateway":
            from gateway.app import GatewayApp
            from jukinet.config import GatewayConfig

            return run_node("gateway", GatewayConfig, GatewayApp, argv)
        from services.municipal.app import MunicipalApp

        return run_node("municipal", MunicipalConfig, MunicipalApp, argv)

    run.set_defaults(func=go)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jukinet",
        description=__doc__.splitlines()[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    pki.register_cli(sub)
    _run_commands(sub)
    _resident_commands(sub)
    _identity_commands(sub)
    from jukinet import agency_cli, demo, importer

    agency_cli.register_cli(sub)
    importer.register_cli(sub)
    demo.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    raise SystemExit(main())
