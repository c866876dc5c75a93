"""Real grpc.aio servers on 127.0.0.1 with real mutual TLS: authentication,
the per-method authorization table, and error translation."""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import logging
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from jukinet import pki
from jukinet.errors import ConfigError, InvalidArgument, SequenceGap
from jukinet.identity import Identity, Kind
from jukinet.interceptors import (
    AuthInterceptor,
    Rule,
    agency,
    all_of,
    allow,
    any_of,
    authenticated,
    current_identity,
    exactly,
    municipality_of_prefecture,
    operator_in_prefecture,
    operator_of,
)
from jukinet.tls import (
    SERVER_OPTIONS,
    RevocationList,
    TlsFiles,
    certificate_policy_problem,
    secure_channel,
    server_credentials,
)
from jukinet.v1 import delivery_pb2, oplog_pb2, prefecture_pb2_grpc, provision_pb2
from tests.federation import EOF, trailers

SERVICE = "/jukinet.v1.PrefectureService/"
STATUS = SERVICE + "GetDeliveryStatus"
ALLOCATE = SERVICE + "AllocateCodePool"
GET_IDENTITY = SERVICE + "GetIdentity"
EXPORT = SERVICE + "ExportIdentities"
PUSH = SERVICE + "PushNotifications"

RULES: dict[str, Rule] = {
    STATUS: any_of(municipality_of_prefecture("31"), operator_of("31")),
    ALLOCATE: municipality_of_prefecture("31"),
    GET_IDENTITY: allow(Kind.MUNICIPALITY),
    EXPORT: allow(Kind.MUNICIPALITY),
    PUSH: municipality_of_prefecture("31"),
}

TIMEOUT = 10


class ProbeServicer(prefecture_pb2_grpc.PrefectureServiceServicer):
    """A prefecture that reports who called and fails on demand."""

    def __init__(self) -> None:
        self.seen: list[Identity] = []

    async def GetDeliveryStatus(
        self, request: delivery_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        """Record the caller and name it in the answer."""
        identity = current_identity()
        self.seen.append(identity)
        return delivery_pb2.GetDeliveryStatusResponse(
            applied=[delivery_pb2.OriginCursor(origin_code=identity.uri)]
        )

    async def AllocateCodePool(
        self, request: delivery_pb2.AllocateCodePoolRequest, context: Any
    ) -> delivery_pb2.AllocateCodePoolResponse:
        """Fail with a sequence gap."""
        raise SequenceGap(current_identity().code, 5, 7)

    async def GetIdentity(
        self, request: delivery_pb2.GetIdentityRequest, context: Any
    ) -> delivery_pb2.GetIdentityResponse:
        """Fail with an unexpected exception whose text must not leak."""
        raise RuntimeError("secret detail: resident 123456789012")

    async def ExportIdentities(
        self, request: delivery_pb2.ExportIdentitiesRequest, context: Any
    ) -> AsyncIterator[delivery_pb2.ExportIdentitiesResponse]:
        """One page, then invalid input."""
        yield delivery_pb2.ExportIdentitiesResponse()
        raise InvalidArgument("page_size", "must be at most 1000")

    async def PushNotifications(
        self, request_iterator: AsyncIterator[delivery_pb2.PushNotificationsRequest], context: Any
    ) -> AsyncIterator[delivery_pb2.PushNotificationsResponse]:
        """Record the caller for each batch and acknowledge its size."""
        async for batch in request_iterator:
            # The identity stays visible for the whole life of the stream.
            self.seen.append(current_identity())
            yield delivery_pb2.PushNotificationsResponse(acknowledged_through=len(batch.entries))

    async def Disclose(
        self, request: provision_pb2.DiscloseRequest, context: Any
    ) -> provision_pb2.DiscloseResponse:
        """Never admitted by these rules."""
        raise NotImplementedError("no rule of this suite admits Disclose")

    async def SubmitCheckpoint(
        self, request: oplog_pb2.SubmitCheckpointRequest, context: Any
    ) -> oplog_pb2.SubmitCheckpointResponse:
        """Not under test here."""
        raise NotImplementedError("no rule of this suite admits SubmitCheckpoint")

    async def GetCheckpoints(
        self, request: oplog_pb2.GetCheckpointsRequest, context: Any
    ) -> oplog_pb2.GetCheckpointsResponse:
        """Not under test here."""
        raise NotImplementedError("no rule of this suite admits GetCheckpoints")


class BareServicer(prefecture_pb2_grpc.PrefectureServiceServicer):
    """Only GetDeliveryStatus; the rest are the generated (synchronous) stubs."""

    async def GetDeliveryStatus(
        self, request: delivery_pb2.GetDeliveryStatusRequest, context: Any
    ) -> delivery_pb2.GetDeliveryStatusResponse:
        """An empty status."""
        return delivery_pb2.GetDeliveryStatusResponse()


# --- PKI fixtures ---------------------------------------------------------------------


class Pki:
    """A federation PKI in a temporary directory, plus a foreign one."""

    def __init__(self, root: Path) -> None:
        self.dir = root / "pki"
        self.foreign = root / "foreign"
        spec = pki.FederationSpec(
            municipalities=["312011", "312029", "131016"], agencies=["nta"], operators=True
        )
        pki.issue_federation(self.dir, spec)
        pki.issue(self.dir, Identity.municipality("312037"), "revoked-312037")
        pki.revoke(self.dir, "revoked-312037")
        pki.create_ca(self.foreign, "impostor CA")
        pki.issue(self.foreign, Identity.municipality("312011"), "municipality-312011")

    def files(self, name: str, *, directory: Path | None = None) -> TlsFiles:
        """TLS files of certificate ``name`` (from ``directory``), under the federation CA."""
        d = directory or self.dir
        return TlsFiles(ca=self.dir / "ca.pem", cert=d / f"{name}.pem", key=d / f"{name}.key")

    def server_files(self) -> TlsFiles:
        """The prefecture server's TLS files, with the CRL."""
        return TlsFiles(
            ca=self.dir / "ca.pem",
            cert=self.dir / "prefecture-31.pem",
            key=self.dir / "prefecture-31.key",
            crl=self.dir / "crl.pem",
        )


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """One PKI for the module."""
    return Pki(tmp_path_factory.mktemp("mtls"))


StartServer = Callable[..., Awaitable[tuple[int, ProbeServicer]]]


@pytest.fixture
async def start_server(federation: Pki) -> AsyncIterator[StartServer]:
    """Start a prefecture server with the interceptor; stopped after the test."""
    servers: list[grpc.aio.Server] = []

    async def start(
        rules: Mapping[str, Rule] = RULES,
        servicer: prefecture_pb2_grpc.PrefectureServiceServicer | None = None,
        revoked: Any = None,
    ) -> tuple[int, Any]:
        files = federation.server_files()
        interceptor = AuthInterceptor(
            rules,
            revoked=revoked if revoked is not None else RevocationList(files),
            ca=files.ca.read_bytes(),
        )
        server = grpc.aio.server(interceptors=[interceptor], options=SERVER_OPTIONS)
        servicer = servicer if servicer is not None else ProbeServicer()
        prefecture_pb2_grpc.add_PrefectureServiceServicer_to_server(servicer, server)
        # The grpc_health stubs lack the aio submodule.
        aio_health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(aio_health, server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(files))
        await server.start()
        servers.append(server)
        return port, servicer

    yield start
    for server in servers:
        await server.stop(None)


def reason(err: grpc.aio.AioRpcError) -> dict[str, str]:
    """The text entries of a failed call's trailing metadata."""
    return trailers(err)


async def get_status(
    port: int, files: TlsFiles, *, host: str = "127.0.0.1"
) -> delivery_pb2.GetDeliveryStatusResponse:
    """GetDeliveryStatus on ``port`` with ``files``."""
    async with secure_channel(f"{host}:{port}", files) as channel:
        stub = prefecture_pb2_grpc.PrefectureServiceStub(channel)
        return await stub.GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        )


async def status_error(port: int, files: TlsFiles, *, channel_credentials: Any = None) -> Any:
    """The error of a GetDeliveryStatus call that must fail."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        if channel_credentials is None:
            await get_status(port, files)
        else:
            async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials) as ch:
                stub = prefecture_pb2_grpc.PrefectureServiceStub(ch)
                await stub.GetDeliveryStatus(
                    delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
                )
    return info.value


# --- authentication and authorization ------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_right_identity_succeeds_and_handler_sees_it(
    federation: Pki, start_server: StartServer, host: str
) -> None:
    # Host name verification stays on: 127.0.0.1 matches the IP SAN,
    # localhost the DNS SAN, with no ssl_target_name_override.
    port, servicer = await start_server()
    response = await get_status(port, federation.files("municipality-312011"), host=host)
    assert [c.origin_code for c in response.applied] == ["jukinet://municipality/312011"]
    assert servicer.seen == [Identity.municipality("312011")]


async def test_any_of_lets_an_operator_of_the_prefecture_in(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    await get_status(port, federation.files("operator-31-admin"))
    assert servicer.seen == [Identity.operator("31", "admin")]


async def test_no_client_certificate_fails_the_handshake(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    only_trust = grpc.ssl_channel_credentials(
        root_certificates=(federation.dir / "ca.pem").read_bytes()
    )
    err = await status_error(port, federation.files("x"), channel_credentials=only_trust)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.seen == []


async def test_client_certificate_from_another_ca_fails_the_handshake(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    # Trusts our CA (so the server checks out) but presents an impostor's
    # certificate naming a legitimate municipality. Built by hand: TlsFiles
    # would refuse a certificate not issued by the CA it is given.
    impostor = grpc.ssl_channel_credentials(
        root_certificates=(federation.dir / "ca.pem").read_bytes(),
        private_key=(federation.foreign / "municipality-312011.key").read_bytes(),
        certificate_chain=(federation.foreign / "municipality-312011.pem").read_bytes(),
    )
    err = await status_error(port, federation.files("x"), channel_credentials=impostor)
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.seen == []


@pytest.mark.parametrize(
    "name",
    ["national", "prefecture-31", "gateway", "agency-nta", "operator-312011-admin"],
)
async def test_wrong_tier_is_permission_denied(
    federation: Pki, start_server: StartServer, name: str
) -> None:
    port, servicer = await start_server()
    err = await status_error(port, federation.files(name))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason(err)["jukinet-reason"] == "wrong-identity"
    assert STATUS in err.details()
    assert "jukinet://" in err.details()
    assert servicer.seen == []


async def test_wrong_prefecture_is_permission_denied(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    err = await status_error(port, federation.files("municipality-131016"))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason(err)["jukinet-reason"] == "wrong-identity"
    assert "jukinet://municipality/131016" in err.details()
    assert servicer.seen == []


async def test_revoked_certificate_is_unauthenticated(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    err = await status_error(port, federation.files("revoked-312037"))
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(err)["jukinet-reason"] == "revoked-certificate"
    assert servicer.seen == []


async def test_revocation_takes_effect_on_a_running_server(
    federation: Pki, start_server: StartServer, tmp_path: Path
) -> None:
    # A private copy of the PKI so revoking here does not leak into other tests.
    private = tmp_path / "pki"
    shutil.copytree(federation.dir, private)
    files = TlsFiles(
        private / "ca.pem",
        private / "prefecture-31.pem",
        private / "prefecture-31.key",
        private / "crl.pem",
    )
    port, servicer = await start_server(revoked=RevocationList(files, check_every=0))
    client = TlsFiles(
        private / "ca.pem", private / "municipality-312029.pem", private / "municipality-312029.key"
    )
    await get_status(port, client)
    pki.revoke(private, "municipality-312029")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_status(port, client)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert len(servicer.seen) == 1


async def test_method_missing_from_the_table_is_denied(
    federation: Pki, start_server: StartServer
) -> None:
    rules = {k: v for k, v in RULES.items() if k != STATUS}
    port, servicer = await start_server(rules)
    err = await status_error(port, federation.files("municipality-312011"))
    assert err.code() is grpc.StatusCode.PERMISSION_DENIED
    assert reason(err)["jukinet-reason"] == "no-rule"
    assert servicer.seen == []


async def test_health_check_is_open_to_any_authenticated_identity(
    federation: Pki, start_server: StartServer
) -> None:
    port, _ = await start_server()
    for name in ("agency-nta", "national", "municipality-131016"):
        async with secure_channel(f"127.0.0.1:{port}", federation.files(name)) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            # Watch is a reader/writer (context.write) streaming handler.
            call = stub.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
            first = await call.read()
            assert first.status == health_pb2.HealthCheckResponse.SERVING
            call.cancel()


async def test_health_check_still_refuses_a_revoked_certificate(
    federation: Pki, start_server: StartServer
) -> None:
    port, _ = await start_server()
    files = federation.files("revoked-312037")
    async with secure_channel(f"127.0.0.1:{port}", files) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=TIMEOUT
            )
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED


async def test_bidirectional_stream_is_authorized_and_sees_the_identity(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()

    async def batches() -> AsyncIterator[delivery_pb2.PushNotificationsRequest]:
        for n in (1, 2, 3):
            yield delivery_pb2.PushNotificationsRequest(
                entries=[delivery_pb2.OutboxEntry(outbox_sequence=i) for i in range(n)]
            )

    files = federation.files("municipality-312011")
    async with secure_channel(f"127.0.0.1:{port}", files) as channel:
        call = prefecture_pb2_grpc.PrefectureServiceStub(channel).PushNotifications(
            batches(), timeout=TIMEOUT
        )
        acks = [r.acknowledged_through async for r in call]
    assert acks == [1, 2, 3]
    assert servicer.seen == [Identity.municipality("312011")] * 3

    files = federation.files("municipality-131016")
    async with secure_channel(f"127.0.0.1:{port}", files) as channel:
        # Reader/writer style, without writing: a grpc.aio client that is still
        # writing when the server ends the call can report INTERNAL "Internal
        # error from Core" instead of the server's status (grpc/grpc#36066).
        call = prefecture_pb2_grpc.PrefectureServiceStub(channel).PushNotifications(
            None, timeout=TIMEOUT
        )
        assert await call.code() is grpc.StatusCode.PERMISSION_DENIED
        metadata = dict(await call.trailing_metadata() or ())
    assert metadata["jukinet-reason"] == "wrong-identity"
    assert len(servicer.seen) == 3


# --- error translation ---------------------------------------------------------------


async def test_jukinet_error_becomes_its_status_and_metadata(
    federation: Pki, start_server: StartServer
) -> None:
    port, _ = await start_server()
    async with secure_channel(f"127.0.0.1:{port}", federation.files("municipality-312011")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await prefecture_pb2_grpc.PrefectureServiceStub(ch).AllocateCodePool(
                delivery_pb2.AllocateCodePoolRequest(), timeout=TIMEOUT
            )
    err = info.value
    assert err.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "origin 312011: expected sequence 5, got 7"
    assert (
        reason(err).items()
        >= {
            "jukinet-reason": "sequence-gap",
            "jukinet-expected-sequence": "5",
        }.items()
    )


async def test_jukinet_error_in_a_response_stream_after_a_message(
    federation: Pki, start_server: StartServer
) -> None:
    port, _ = await start_server()
    async with secure_channel(f"127.0.0.1:{port}", federation.files("municipality-131016")) as ch:
        call = prefecture_pb2_grpc.PrefectureServiceStub(ch).ExportIdentities(
            delivery_pb2.ExportIdentitiesRequest(), timeout=TIMEOUT
        )
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as info:
            async for response in call:
                received.append(response)
    assert len(received) == 1
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert reason(info.value) == {
        "jukinet-reason": "invalid-argument",
        "jukinet-field": "page_size",
    }


async def test_unexpected_exception_is_internal_and_logged(
    federation: Pki, start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = await start_server()
    caplog.set_level(logging.ERROR, logger="jukinet.rpc")
    async with secure_channel(f"127.0.0.1:{port}", federation.files("municipality-131016")) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await prefecture_pb2_grpc.PrefectureServiceStub(ch).GetIdentity(
                delivery_pb2.GetIdentityRequest(), timeout=TIMEOUT
            )
    err = info.value
    assert err.code() is grpc.StatusCode.INTERNAL
    assert err.details() == "internal error"
    assert "secret" not in (err.debug_error_string() or "")
    records = [r for r in caplog.records if r.name == "jukinet.rpc"]
    assert len(records) == 1
    assert GET_IDENTITY in records[0].getMessage()
    assert "jukinet://municipality/131016" in records[0].getMessage()
    # The server log names the exception's class and where it was raised,
    # never its text nor a traceback's (a database error quotes the row).
    assert "RuntimeError" in records[0].getMessage()
    assert "(GetIdentity)" in records[0].getMessage()
    assert records[0].exc_info is None
    assert "secret" not in caplog.text


async def test_generated_stub_of_an_unimplemented_method_is_unimplemented(
    federation: Pki, start_server: StartServer
) -> None:
    # mypy-protobuf declares the servicer's methods abstract; the generated class
    # really answers UNIMPLEMENTED for them, which is what this test checks.
    port, _ = await start_server(servicer=BareServicer())  # type: ignore[abstract]
    files = federation.files("municipality-312011")
    async with secure_channel(f"127.0.0.1:{port}", files) as ch:
        stub = prefecture_pb2_grpc.PrefectureServiceStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.AllocateCodePool(delivery_pb2.AllocateCodePoolRequest(), timeout=TIMEOUT)
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED

        async def one() -> AsyncIterator[delivery_pb2.PushNotificationsRequest]:
            yield delivery_pb2.PushNotificationsRequest()

        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in stub.PushNotifications(one(), timeout=TIMEOUT)]
        assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


# Generic handlers of every cardinality, async as every servicer is: each
# records that its body ran, and answers with what it saw of the caller.
PROBE = "test.Probe"
PROBE_RULES = {f"/{PROBE}/{m}": allow(Kind.MUNICIPALITY) for m in ("A", "B", "C", "D", "E", "F")}
REQUESTS = [b"x", b"y", b"z"]


def probe_handlers(ran: list[str]) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    async def unary_unary(request: bytes, context: Any) -> bytes:
        ran.append("unary_unary")
        return request + b" from " + current_identity().uri.encode()

    async def unary_stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
        ran.append("unary_stream")
        yield request
        yield current_identity().uri.encode()

    async def unary_stream_writer(request: bytes, context: Any) -> None:
        ran.append("unary_stream_writer")
        await context.write(request)
        await context.write(current_identity().uri.encode())

    async def stream_unary(requests: AsyncIterator[bytes], context: Any) -> bytes:
        ran.append("stream_unary")
        got = [r async for r in requests]
        return b"".join(got) + b" from " + current_identity().uri.encode()

    async def stream_stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        ran.append("stream_stream")
        async for r in requests:
            yield r + b" from " + current_identity().uri.encode()

    async def stream_stream_writer(requests: AsyncIterator[bytes], context: Any) -> None:
        ran.append("stream_stream_writer")
        async for r in requests:
            await context.write(r + b" from " + current_identity().uri.encode())

    return {
        "A": grpc.unary_unary_rpc_method_handler(unary_unary),
        "B": grpc.unary_stream_rpc_method_handler(unary_stream),
        "C": grpc.unary_stream_rpc_method_handler(unary_stream_writer),
        "D": grpc.stream_unary_rpc_method_handler(stream_unary),
        "E": grpc.stream_stream_rpc_method_handler(stream_stream),
        "F": grpc.stream_stream_rpc_method_handler(stream_stream_writer),
    }


def sync_handlers(ran: list[str]) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Synchronous behaviours of every cardinality: none of them may run."""

    def one(request: Any, context: Any) -> bytes:
        ran.append("sync")
        return b"ran"

    def many(request: Any, context: Any) -> Iterator[bytes]:
        ran.append("sync")
        yield b"ran"

    return {
        "A": grpc.unary_unary_rpc_method_handler(one),
        "B": grpc.unary_stream_rpc_method_handler(many),
        "D": grpc.stream_unary_rpc_method_handler(one),
        "E": grpc.stream_stream_rpc_method_handler(many),
    }


@contextlib.asynccontextmanager
async def probe_server(
    federation: Pki, handlers: dict[str, grpc.RpcMethodHandler[Any, Any]]
) -> AsyncIterator[int]:
    server = grpc.aio.server(interceptors=[AuthInterceptor(PROBE_RULES)])
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(PROBE, handlers)])
    port = server.add_secure_port("127.0.0.1:0", server_credentials(federation.server_files()))
    await server.start()
    try:
        yield port
    finally:
        await server.stop(None)


async def probe_call(
    channel: grpc.aio.Channel, method: str, *, write: bool
) -> tuple[grpc.StatusCode, list[bytes], dict[str, str], str]:
    """Call probe ``method`` (its letter picks the cardinality); status, replies, trailers.

    With ``write`` false a client-streaming call sends nothing: a client still
    writing when the server ends the call can see INTERNAL "Internal error
    from Core" instead of the server's status (grpc/grpc#36066).
    """
    path = f"/{PROBE}/{method}"
    replies: list[bytes] = []
    # Bytes in, bytes out: no serializers, which the (synchronous) stubs do not allow.
    ch: Any = channel
    call: Any
    if method == "A":
        call = ch.unary_unary(path)(b"hi", timeout=TIMEOUT)
    elif method in "BC":
        call = ch.unary_stream(path)(b"hi", timeout=TIMEOUT)
    elif method == "D":
        call = ch.stream_unary(path)(timeout=TIMEOUT)
    else:
        call = ch.stream_stream(path)(timeout=TIMEOUT)
    if method in "DEF":
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError):
            for request in REQUESTS if write else ():
                await call.write(request)
            await call.done_writing()
    with contextlib.suppress(grpc.aio.AioRpcError):
        if method in "AD":
            replies.append(await call)
        else:
            while (reply := await call.read()) is not EOF:
                replies.append(reply)
    trailers = {k: v for k, v in await call.trailing_metadata() or () if isinstance(v, str)}
    return await call.code(), replies, trailers, await call.details() or ""


CALLER = b"jukinet://municipality/131016"
PROBE_REPLIES = {
    "A": [b"hi from " + CALLER],
    "B": [b"hi", CALLER],
    "C": [b"hi", CALLER],
    "D": [b"xyz from " + CALLER],
    "E": [r + b" from " + CALLER for r in REQUESTS],
    "F": [r + b" from " + CALLER for r in REQUESTS],
}


@pytest.mark.parametrize(
    ("method", "behaviour"),
    [
        ("A", "unary_unary"),
        ("B", "unary_stream"),
        ("C", "unary_stream_writer"),
        ("D", "stream_unary"),
        ("E", "stream_stream"),
        ("F", "stream_stream_writer"),
    ],
)
async def test_every_cardinality_is_guarded(federation: Pki, method: str, behaviour: str) -> None:
    ran: list[str] = []
    async with probe_server(federation, probe_handlers(ran)) as port:
        async with secure_channel(f"127.0.0.1:{port}", federation.files("national")) as ch:
            code, replies, trailers, details = await probe_call(ch, method, write=False)
        assert code is grpc.StatusCode.PERMISSION_DENIED
        assert trailers["jukinet-reason"] == "wrong-identity"
        assert f"/{PROBE}/{method}" in details
        assert replies == []
        assert ran == []  # refused before the body ran
        async with secure_channel(
            f"127.0.0.1:{port}", federation.files("municipality-131016")
        ) as ch:
            code, replies, _, _ = await probe_call(ch, method, write=True)
    assert code is grpc.StatusCode.OK
    assert replies == PROBE_REPLIES[method]
    assert ran == [behaviour]


@pytest.mark.parametrize("method", ["A", "B", "D", "E"])
async def test_a_synchronous_handler_is_never_run(
    federation: Pki, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="jukinet.rpc")
    ran: list[str] = []
    async with probe_server(federation, sync_handlers(ran)) as port:
        # Authorization still comes first.
        async with secure_channel(f"127.0.0.1:{port}", federation.files("national")) as ch:
            code, replies, trailers, _ = await probe_call(ch, method, write=False)
        assert (code, replies) == (grpc.StatusCode.PERMISSION_DENIED, [])
        assert trailers["jukinet-reason"] == "wrong-identity"
        async with secure_channel(
            f"127.0.0.1:{port}", federation.files("municipality-131016")
        ) as ch:
            code, replies, _, details = await probe_call(ch, method, write=False)
    # A wiring bug, not a missing method: a server fault, logged in full.
    assert (code, replies, details) == (grpc.StatusCode.INTERNAL, [], "internal error")
    assert ran == []
    assert f"/{PROBE}/{method}" in caplog.text
    assert "synchronous" in caplog.text


# --- pieces --------------------------------------------------------------------------


def test_current_identity_outside_an_rpc_raises() -> None:
    with pytest.raises(RuntimeError):
        current_identity()


def test_rule_builders() -> None:
    m31 = Identity.municipality("312011")
    m13 = Identity.municipality("131016")
    op31 = Identity.operator("31", "admin")
    op_m31 = Identity.operator("312011", "clerk")
    nta = Identity.agency("nta")
    assert allow(Kind.MUNICIPALITY)(m13)
    assert not allow(Kind.PREFECTURE, Kind.NATIONAL)(m13)
    assert municipality_of_prefecture("31")(m31)
    assert not municipality_of_prefecture("31")(m13)
    assert not municipality_of_prefecture("31")(op31)
    assert operator_of("31")(op31) and not operator_of("31")(op_m31)
    assert operator_of("312011")(op_m31)
    assert operator_in_prefecture("31")(op31) and operator_in_prefecture("31")(op_m31)
    assert not operator_in_prefecture("13")(op31)
    assert agency()(nta) and agency("nta")(nta) and not agency("mhlw")(nta)
    assert exactly(m31)(m31) and not exactly(m31)(m13)
    assert authenticated()(nta)
    assert any_of(allow(Kind.AGENCY), operator_of("31"))(op31)
    assert not any_of()(m31)
    assert all_of(allow(Kind.MUNICIPALITY), municipality_of_prefecture("13"))(m13)
    assert not all_of()(m31)
    with pytest.raises(ValueError):
        municipality_of_prefecture("48")
    with pytest.raises(ValueError):
        operator_of("312012")
    with pytest.raises(ValueError):
        allow()


def test_rule_table_keys_must_be_full_method_names() -> None:
    with pytest.raises(ValueError):
        AuthInterceptor({"jukinet.v1.PrefectureService/GetDeliveryStatus": authenticated()})


# --- TLS files -----------------------------------------------------------------------


def test_tls_files_load_checks_everything(federation: Pki, tmp_path: Path) -> None:
    good = federation.server_files()
    material = good.load()
    assert material.revoked_serials  # the revoked test certificate
    assert material.cert.startswith(b"-----BEGIN CERTIFICATE-----")

    def fails(files: TlsFiles, *words: str) -> None:
        with pytest.raises(ConfigError) as info:
            files.load()
        message = str(info.value)
        assert "\n" not in message
        for word in words:
            assert word in message

    missing = tmp_path / "nope.pem"
    fails(TlsFiles(good.ca, missing, good.key), "tls.cert", "file not found")
    not_pem = tmp_path / "junk.pem"
    not_pem.write_text("hello")
    fails(TlsFiles(not_pem, good.cert, good.key), "tls.ca", "not a PEM")
    fails(TlsFiles(good.ca, good.cert, federation.dir / "national.key"), "does not match")
    foreign = federation.files("municipality-312011", directory=federation.foreign)
    fails(TlsFiles(good.ca, foreign.cert, foreign.key), "not issued by the CA")
    fails(
        TlsFiles(
            good.ca,
            federation.dir / "revoked-312037.pem",
            federation.dir / "revoked-312037.key",
            good.crl,
        ),
        "revoked",
    )
    foreign_crl = federation.foreign / "crl.pem"
    fails(TlsFiles(good.ca, good.cert, good.key, foreign_crl), "tls.crl", "not signed by the CA")
    fails(TlsFiles(tmp_path, good.cert, good.key), "tls.ca", "directory")

    expired_cert, expired_key = _expired_leaf(federation.dir, tmp_path)
    fails(TlsFiles(good.ca, expired_cert, expired_key), "tls.cert", "expired")


def _expired_leaf(ca_dir: Path, out: Path) -> tuple[Path, Path]:
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=30))
        .not_valid_after(now - dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = out / "old.pem", out / "old.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


async def test_channel_to_a_server_with_a_foreign_certificate_fails(
    federation: Pki, tmp_path: Path
) -> None:
    # The client verifies the server as strictly as the server verifies the client.
    pki.create_ca(tmp_path, "impostor CA")
    pki.issue(tmp_path, Identity.prefecture("31"), "prefecture-31")
    impostor = TlsFiles(
        tmp_path / "ca.pem", tmp_path / "prefecture-31.pem", tmp_path / "prefecture-31.key"
    )
    server = grpc.aio.server(interceptors=[AuthInterceptor(RULES)])
    servicer = ProbeServicer()
    prefecture_pb2_grpc.add_PrefectureServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(impostor))
    await server.start()
    try:
        err = await status_error(port, federation.files("municipality-312011"))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert servicer.seen == []
    finally:
        await server.stop(None)


# --- certificate policy --------------------------------------------------------------


def _load_ca(ca_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    return ca_cert, ca_key


def _hand_made_leaf(
    issuer: tuple[x509.Certificate, Any],
    identity: Identity,
    *,
    key: Any = None,
    ca: bool = False,
    usages: tuple[x509.ObjectIdentifier, ...] = (
        ExtendedKeyUsageOID.CLIENT_AUTH,
        ExtendedKeyUsageOID.SERVER_AUTH,
    ),
) -> tuple[x509.Certificate, Any]:
    """A leaf for ``identity`` signed by ``issuer``, with the policy flaws asked for."""
    issuer_cert, issuer_key = issuer
    key = key if key is not None else ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, identity.uri)]))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(identity.uri), x509.IPAddress(_LOOPBACK)]
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


_LOOPBACK = ipaddress.ip_address("127.0.0.1")


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def _key_pem(key: Any) -> bytes:
    return bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def _hand_made_call(federation: Pki, port: int, chain: bytes, key: Any) -> Any:
    """GetDeliveryStatus with a certificate chain built by hand; the error it must fail with."""
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(federation.dir / "ca.pem").read_bytes(),
        private_key=_key_pem(key),
        certificate_chain=chain,
    )
    return await status_error(port, federation.files("x"), channel_credentials=credentials)


def _refused_by_policy(err: Any, servicer: ProbeServicer, *words: str) -> None:
    """The call was refused as UNAUTHENTICATED with its reason and never ran."""
    assert servicer.seen == []
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED, err.details()
    assert reason(err)["jukinet-reason"] == "bad-certificate"
    for word in words:
        assert word in err.details()


M31 = Identity.municipality("312011")


async def test_a_leaf_flagged_as_a_ca_is_refused(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    cert, key = _hand_made_leaf(_load_ca(federation.dir), M31, ca=True)
    err = await _hand_made_call(federation, port, _pem(cert), key)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    _refused_by_policy(err, servicer, "CA:TRUE")


async def test_a_certificate_chained_under_a_leaf_is_refused(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    middle = _hand_made_leaf(_load_ca(federation.dir), Identity.agency("nta"), ca=True)
    cert, key = _hand_made_leaf(middle, M31)
    # The handshake accepts this chain (a trust anchor's pathLen is not
    # enforced); the interceptor refuses a leaf the root did not sign itself.
    err = await _hand_made_call(federation, port, _pem(cert, middle[0]), key)
    _refused_by_policy(err, servicer, "root -> leaf")


async def test_an_rsa_1024_key_is_refused(federation: Pki, start_server: StartServer) -> None:
    port, servicer = await start_server()
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    cert, key = _hand_made_leaf(_load_ca(federation.dir), M31, key=weak)
    err = await _hand_made_call(federation, port, _pem(cert), key)
    assert err.code() is grpc.StatusCode.UNAUTHENTICATED
    _refused_by_policy(err, servicer, "RSA-1024")


async def test_an_rsa_2048_key_is_accepted(federation: Pki, start_server: StartServer) -> None:
    port, servicer = await start_server()
    strong = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert, key = _hand_made_leaf(_load_ca(federation.dir), M31, key=strong)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(federation.dir / "ca.pem").read_bytes(),
        private_key=_key_pem(key),
        certificate_chain=_pem(cert),
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
        await prefecture_pb2_grpc.PrefectureServiceStub(channel).GetDeliveryStatus(
            delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
        )
    assert servicer.seen == [M31]


async def test_a_certificate_without_client_auth_is_refused_as_a_client(
    federation: Pki, start_server: StartServer
) -> None:
    port, servicer = await start_server()
    cert, key = _hand_made_leaf(
        _load_ca(federation.dir), M31, usages=(ExtendedKeyUsageOID.SERVER_AUTH,)
    )
    err = await _hand_made_call(federation, port, _pem(cert), key)
    # The handshake already refuses a client certificate without clientAuth;
    # the interceptor's own check (below) stands behind it.
    assert err.code() is grpc.StatusCode.UNAVAILABLE
    assert servicer.seen == []
    assert "clientAuth" in certificate_policy_problem(cert, usage="client")
    assert certificate_policy_problem(cert, usage="server") == ""


def test_own_certificate_must_fit_its_role(federation: Pki, tmp_path: Path) -> None:
    ca = _load_ca(federation.dir)
    for name, (cert, key), role, word in [
        (
            "client-only",
            _hand_made_leaf(ca, M31, usages=(ExtendedKeyUsageOID.CLIENT_AUTH,)),
            "server",
            "serverAuth",
        ),
        (
            "server-only",
            _hand_made_leaf(ca, M31, usages=(ExtendedKeyUsageOID.SERVER_AUTH,)),
            "client",
            "clientAuth",
        ),
        ("ca-leaf", _hand_made_leaf(ca, M31, ca=True), "client", "CA:TRUE"),
    ]:
        (tmp_path / f"{name}.pem").write_bytes(_pem(cert))
        (tmp_path / f"{name}.key").write_bytes(_key_pem(key))
        files = TlsFiles(
            federation.dir / "ca.pem", tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
        )
        with pytest.raises(ConfigError) as info:
            files.load(usage=role)
        assert word in str(info.value) and "\n" not in str(info.value)


def test_a_root_that_allows_intermediates_is_refused_at_start(
    federation: Pki, tmp_path: Path
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old root")])
    now = dt.datetime.now(dt.UTC)
    root = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "ca.pem").write_bytes(_pem(root))
    cert, leaf_key = _hand_made_leaf((root, key), M31)
    (tmp_path / "leaf.pem").write_bytes(_pem(cert))
    (tmp_path / "leaf.key").write_bytes(_key_pem(leaf_key))
    with pytest.raises(ConfigError) as info:
        TlsFiles(tmp_path / "ca.pem", tmp_path / "leaf.pem", tmp_path / "leaf.key").load()
    assert "pathLen 0" in str(info.value) and "\n" not in str(info.value)


async def test_forced_reissue_revokes_the_old_certificate_on_a_running_server(
    federation: Pki, start_server: StartServer, tmp_path: Path
) -> None:
    private = tmp_path / "pki"
    shutil.copytree(federation.dir, private)
    files = TlsFiles(
        private / "ca.pem",
        private / "prefecture-31.pem",
        private / "prefecture-31.key",
        private / "crl.pem",
    )
    port, servicer = await start_server(revoked=RevocationList(files, check_every=0))
    old = tmp_path / "old"
    old.mkdir()
    for suffix in ("pem", "key"):
        shutil.copy(
            private / f"municipality-312029.{suffix}", old / f"municipality-312029.{suffix}"
        )
    old_files = TlsFiles(
        private / "ca.pem", old / "municipality-312029.pem", old / "municipality-312029.key"
    )
    await get_status(port, old_files)
    with pytest.raises(FileExistsError, match="--force"):
        pki.issue(private, Identity.municipality("312029"), "municipality-312029")
    assert (private / "municipality-312029.pem").read_bytes() == (
        old / "municipality-312029.pem"
    ).read_bytes()
    pki.issue(private, Identity.municipality("312029"), "municipality-312029", force=True)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_status(port, old_files)
    assert info.value.code() is grpc.StatusCode.UNAUTHENTICATED
    assert reason(info.value)["jukinet-reason"] == "revoked-certificate"
    new_files = TlsFiles(
        private / "ca.pem", private / "municipality-312029.pem", private / "municipality-312029.key"
    )
    await get_status(port, new_files)
    assert servicer.seen == [Identity.municipality("312029")] * 2


async def test_a_server_certificate_without_server_auth_is_refused_by_the_client(
    federation: Pki,
) -> None:
    cert, key = _hand_made_leaf(
        _load_ca(federation.dir),
        Identity.prefecture("31"),
        usages=(ExtendedKeyUsageOID.CLIENT_AUTH,),
    )
    # A node refuses to serve with such a certificate (TlsFiles.load); built by
    # hand here to show that a client refuses such a server too.
    credentials = grpc.ssl_server_credentials(
        [(_key_pem(key), _pem(cert))],
        root_certificates=(federation.dir / "ca.pem").read_bytes(),
        require_client_auth=True,
    )
    server = grpc.aio.server(interceptors=[AuthInterceptor(RULES)])
    servicer = ProbeServicer()
    prefecture_pb2_grpc.add_PrefectureServiceServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        err = await status_error(port, federation.files("municipality-312011"))
        assert err.code() is grpc.StatusCode.UNAVAILABLE
        assert servicer.seen == []
    finally:
        await server.stop(None)
