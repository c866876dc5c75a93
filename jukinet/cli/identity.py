"""``jukinet identity``: records held by a prefecture or the national node."""

from __future__ import annotations

import argparse
from typing import Any

import grpc
from google.protobuf.message import Message

from jukinet.cli.common import connection_options, run_call
from jukinet.v1 import delivery_pb2, national_pb2_grpc, prefecture_pb2_grpc


def _service(tier: str) -> str:
    return "jukinet.v1.NationalService" if tier == "national" else "jukinet.v1.PrefectureService"


def _upper_stub(channel: grpc.aio.Channel, tier: str) -> Any:
    if tier == "national":
        return national_pb2_grpc.NationalServiceStub(channel)
    return prefecture_pb2_grpc.PrefectureServiceStub(channel)


def register_cli(sub: Any) -> None:
    """Add ``identity show | status`` to the ``jukinet`` parser."""
    identity = sub.add_parser("identity", help="records held by a prefecture or the national node")
    ops = identity.add_subparsers(dest="op", required=True)

    show = ops.add_parser("show", help="one record as held, with its history")
    connection_options(show)
    show.add_argument("code")
    show.add_argument("--tier", choices=["prefecture", "national"], required=True)

    async def do_show(ch: grpc.aio.Channel, a: argparse.Namespace) -> Message:
        response: Message = await _upper_stub(ch, a.tier).GetIdentity(
            delivery_pb2.GetIdentityRequest(resident_code=a.code)
        )
        return response

    show.set_defaults(
        func=lambda a: run_call(
            a, do_show, service=_service(a.tier), flags={"resident_code": "the resident code"}
        )
    )

    status = ops.add_parser("status", help="delivery cursors and counts")
    connection_options(status)
    status.add_argument("--tier", choices=["prefecture", "national"], required=True)

    async def do_status(ch: grpc.aio.Channel, a: argparse.Namespace) -> Message:
        response: Message = await _upper_stub(ch, a.tier).GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest()
        )
        return response

    status.set_defaults(func=lambda a: run_call(a, do_status, service=_service(a.tier)))
