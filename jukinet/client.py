"""Client side for tools (the CLI, the demo, benchmarks): channels opened with a
certificate from a PKI directory, readable gRPC errors, and the ready headers
that open a client-streaming call (the one wire convention both ends share)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from jukinet.errors import error_metadata
from jukinet.identity import Identity
from jukinet.tls import TlsFiles, secure_channel
from jukinet.v1 import operator_pb2, operator_pb2_grpc


def tls_files(pki_dir: Path | str, name: str) -> TlsFiles:
    """The files of certificate ``name`` (e.g. ``operator-312011-admin``) in a PKI folder."""
    d = Path(pki_dir)
    return TlsFiles(ca=d / "ca.pem", cert=d / f"{name}.pem", key=d / f"{name}.key")


def connect(
    target: str, pki_dir: Path | str, name: str, *, session: str | None = None
) -> grpc.aio.Channel:
    """An mTLS channel to ``target`` presenting certificate ``name`` (with an
    operator's ``session`` token on every call, if given)."""
    files = tls_files(pki_dir, name)
    files.load()  # fail early, with one clear line, on a missing or bad file
    return secure_channel(target, files, session=session)


class Signer(Protocol):
    """What logs an operator in: an open operator card (:class:`jukinet.card.Card`)."""

    @property
    def certificate(self) -> x509.Certificate:
        """The card's operator certificate."""
        ...

    @property
    def identity(self) -> Identity:
        """The operator the card names."""
        ...

    def sign(self, data: bytes) -> bytes:
        """The card's signature of ``data``."""
        ...


async def log_in(
    channel: grpc.aio.Channel,
    card: Signer,
    password: str,
    *,
    new_password: str | None = None,
) -> operator_pb2.LoginResponse:
    """Log the card's operator in over ``channel`` (a counter terminal's mTLS
    channel, without a session): ask for a challenge, sign it on the card,
    send the signature, the card's certificate and the password.

    The response's ``session_token`` then opens a channel with
    ``connect(..., session=token)`` from the same terminal.
    """
    stub = operator_pb2_grpc.OperatorServiceStub(channel)
    begun: operator_pb2.BeginLoginResponse = await stub.BeginLogin(
        operator_pb2.BeginLoginRequest(operator_id=card.identity.operator_id)
    )
    signature = await asyncio.to_thread(card.sign, begun.challenge)
    response: operator_pb2.LoginResponse = await stub.Login(
        operator_pb2.LoginRequest(
            nonce=begun.nonce,
            signature=signature,
            card_certificate=card.certificate.public_bytes(serialization.Encoding.DER),
            password=password,
            new_password=new_password or "",
        )
    )
    return response


STREAM_READY = ("jukinet-stream", "ready")
"""Headers a server sends first on a client-streaming call it accepted, before it
reads a message. A refusal of the whole call (permission, limits) is sent in
their place, with no headers."""


async def wait_until_accepted(call: Any) -> None:
    """Before the first write on a streaming ``call``: wait for its headers and
    raise the server's refusal as :class:`grpc.aio.AioRpcError` when they are
    not :data:`STREAM_READY`. A client still writing when the server ends the
    call otherwise sees the transport's ``INTERNAL: Internal error from Core``
    instead of the server's status (grpc/grpc#36066)."""
    headers = await call.initial_metadata()
    if STREAM_READY in tuple(headers or ()):
        return
    await call.read()  # the call has ended: this raises its status
    raise RuntimeError("the server opened the stream without its ready headers")


# A server that words an upstream failure with str(AioRpcError) sends this
# multi-line dump; only its details are worth a line.
_NESTED_RPC_ERROR = re.compile(
    r"<AioRpcError of RPC that terminated with:.*?details = \"(?P<details>[^\"]*)\".*?>", re.S
)


def one_line(details: str) -> str:
    """A status message on one line: a nested AioRpcError dump reduced to its details."""
    details = _NESTED_RPC_ERROR.sub(lambda m: m["details"], details)
    return " ".join(details.split())


def describe_error(exc: grpc.aio.AioRpcError, flags: Mapping[str, str] | None = None) -> str:
    """One line: status, message and the machine-readable reason and field.

    ``flags`` maps request fields to the command-line options that set them;
    a bad field the user typed as an option is named as that option.
    """
    meta = error_metadata(exc)
    details = one_line(exc.details() or "")
    field = meta.get("jukinet-field", "")
    option = (flags or {}).get(field)
    if option is not None:
        if details.startswith(f"{field}:"):
            details = option + details[len(field) :]
        meta.pop("jukinet-field")
    extra = ", ".join(
        f"{k.removeprefix('jukinet-')}={v}" for k, v in meta.items() if k.startswith("jukinet-")
    )
    return f"{exc.code().name}: {details}" + (f" ({extra})" if extra else "")
