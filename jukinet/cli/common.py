"""What every command group shares: connection options, one call, JSON output."""

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

from jukinet.client import connect, describe_error
from jukinet.errors import ConfigError
from jukinet.v1 import common_pb2

SEX: dict[str, common_pb2.Sex.ValueType] = {
    "male": common_pb2.SEX_MALE,
    "female": common_pb2.SEX_FEMALE,
}


def print_message(message: Message, *, all_fields: bool = False) -> None:
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


def connection_options(parser: argparse.ArgumentParser) -> None:
    env = os.environ
    parser.add_argument("--target", default=env.get("JUKINET_TARGET"), help="host:port of the node")
    parser.add_argument("--pki", default=env.get("JUKINET_PKI", "pki"), help="PKI folder")
    parser.add_argument(
        "--as",
        dest="identity",
        default=env.get("JUKINET_AS"),
        help="certificate name in the PKI folder, e.g. operator-312011-admin",
    )


# Stub calls are typed loosely by the generated stubs; each returns a response message.
Call = Callable[[grpc.aio.Channel, argparse.Namespace], Any]


def run_call(
    args: argparse.Namespace, call: Call, show: Callable[[Any], None] = print_message
) -> int:
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
