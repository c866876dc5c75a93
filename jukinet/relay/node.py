"""A node's relay: its keys, the directory it keeps fresh, the hop of a prefecture
or the national node, and the one place every hop's log entry is written.

- :class:`DirectoryKeeper` holds the newest verified directory, durably (its
  node's ``relay_directory`` table), so a node keeps relaying on it while the
  national node is away, until expiry plus :data:`~jukinet.relay.directory.GRACE`.
  :class:`SigningKeeper` (the national node) signs it from the administered
  file; :class:`FetchingKeeper` (the others) asks the tier above for a newer one
  and verifies it itself (a prefecture serves the bytes as signed).
- :class:`RelayHop` is a prefecture's or the national node's ``Relay``: check the
  header, check the caller for this envelope (:mod:`jukinet.relay.route`), pass
  the envelope on unchanged and the answer back.
- :class:`RelayRecorder` appends each envelope's entry to the node's operation
  log (with the ``relay`` key) and counts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2

from jukinet.audit import outcome_of
from jukinet.clock import Clock
from jukinet.db import Database
from jukinet.errors import (
    INFO_RETRY_AFTER_MS,
    ConfigError,
    JukinetError,
    NotFound,
    Unavailable,
    from_upstream,
)
from jukinet.identity import Identity
from jukinet.interceptors import current_identity
from jukinet.metrics import RelayMetrics
from jukinet.oplog.entry import Operation, Relayed
from jukinet.oplog.log import OperationLog
from jukinet.reasons import Reason
from jukinet.relay import directory as directories
from jukinet.relay import header as headers
from jukinet.relay.directory import DirectoryExpired, DirectoryInvalid, Source, Verified
from jukinet.relay.header import Header
from jukinet.relay.seal import SealInvalid, Trust
from jukinet.relay.store import DirectoryStore, HeldDirectory
from jukinet.tls import RevocationList, TlsFiles, secure_channel
from jukinet.v1 import relay_pb2, relay_pb2_grpc

log = logging.getLogger("jukinet.relay")

HOP_TIMEOUT = 20.0
"""Seconds a hop waits for the next one (which waits for the one after it, less)."""
FETCH_TIMEOUT = 10.0
"""Seconds a node waits for the tier above's directory."""
RETRY_AFTER_MS = 5_000
"""The wait a hop suggests (RetryInfo) when the next node cannot be reached."""


# --- keys ---------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeKeys:
    """The node's own key and certificate, and the trust others' are checked against."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    trust: Trust

    @classmethod
    def from_tls(cls, files: TlsFiles) -> NodeKeys:
        """The node's TLS key and certificate, its CA and CRL; :class:`ConfigError` if the
        key is not an EC key."""
        material = files.load(usage="server")
        key = serialization.load_pem_private_key(material.key, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"tls.key: {files.key}: the node's key must be an EC key")
        return cls(
            key=key,
            certificate=x509.load_pem_x509_certificates(material.cert)[0],
            trust=Trust(
                ca=x509.load_pem_x509_certificate(material.ca),
                revoked=RevocationList(files) if files.crl else frozenset(),
            ),
        )


# --- errors ---------------------------------------------------------------------------


class HopUnavailable(Unavailable):
    """The next node on the route cannot be reached now: retry after a while."""

    def info(self) -> Mapping[str, str]:
        """The suggested wait."""
        return {INFO_RETRY_AFTER_MS: str(RETRY_AFTER_MS)}

    def extra_details(self) -> list[Message]:
        """The wait as ``google.rpc.RetryInfo``."""
        delay = duration_pb2.Duration()
        delay.FromMilliseconds(RETRY_AFTER_MS)
        return [error_details_pb2.RetryInfo(retry_delay=delay)]


class UnknownDestination(NotFound):
    """The directory lists no node for the destination."""

    reason = Reason.RELAY_UNKNOWN_DESTINATION


def upstream_error(exc: grpc.aio.AioRpcError, peer: Identity) -> JukinetError:
    """A failed call to the next node as this node's error: its refusal passed on, an
    unreachable node as :class:`HopUnavailable`."""
    passed = from_upstream(exc, peer.uri)
    if passed.code is grpc.StatusCode.UNAVAILABLE and passed.wire_reason == str(Reason.UPSTREAM):
        return HopUnavailable(f"{peer.uri} cannot be reached now; retry later")
    return passed


# --- the directory ----------------------------------------------------------------------


class DirectoryKeeper:
    """The newest verified directory a node holds (see the module)."""

    def __init__(
        self,
        *,
        db: Database,
        store: DirectoryStore,
        trust: Trust,
        clock: Clock,
        interval: float,
    ) -> None:
        self.db = db
        self.store = store
        self.trust = trust
        self.clock = clock
        self.interval = interval
        self.current: Verified | None = None
        self._fingerprint = b""
        self._lock = asyncio.Lock()
        self._warned = ""

    async def load(self) -> None:
        """Take the directory stored at the last run (if it still verifies)."""
        async with self.db.read() as conn:
            held = await self.store.newest(conn)
        if held is None:
            return
        try:
            signed = relay_pb2.SignedDirectory.FromString(held.signed)
            self.current = directories.verify(signed, self.trust, self.clock.now())
            self._fingerprint = held.fingerprint
        except (DecodeError, DirectoryInvalid) as exc:
            log.warning("the stored directory (serial %d) is not used: %s", held.serial, exc)

    async def keep(self, verified: Verified, fingerprint: bytes = b"") -> None:
        """Hold ``verified`` from now on, durably."""
        held = HeldDirectory(verified.serial, verified.signed.SerializeToString(), fingerprint)
        async with self.db.write() as conn:
            await self.store.keep(conn, held, self.clock.now())
        self.current = verified
        self._fingerprint = fingerprint
        log.info("relay directory serial %d, %d nodes", verified.serial, len(verified.entries))

    def usable(self) -> Verified:
        """The directory to relay on now; :class:`DirectoryExpired` if none is usable."""
        if self.current is None:
            raise DirectoryExpired("no relay directory is held yet; retry later")
        self.current.check_usable(self.clock.now())
        return self.current

    async def refresh(self) -> bool:
        """Look for a newer directory; whether one is held now that was not."""
        raise NotImplementedError

    async def entry(self, identity: Identity) -> relay_pb2.DirectoryEntry:
        """The entry of ``identity``: looked for again once when not listed."""
        found = self.usable().entry(identity) if self.current is not None else None
        if found is None:
            with contextlib.suppress(JukinetError, grpc.aio.AioRpcError, ConfigError):
                await self.refresh()
            found = self.usable().entry(identity)
        if found is None:
            raise UnknownDestination(f"the relay directory lists no node {identity.uri}")
        return found

    async def newer_than(self, serial: int) -> relay_pb2.GetDirectoryResponse:
        """The directory held, if newer than ``serial`` (the caller's); when it is not,
        one look for a newer one first (the caller may be after a node just added)."""
        if self.current is None or self.current.serial <= serial:
            await self.tick()
        if self.current is None or self.current.serial <= serial:
            return relay_pb2.GetDirectoryResponse()
        return relay_pb2.GetDirectoryResponse(directory=self.current.signed)

    async def run(self) -> None:
        """:meth:`refresh` now and every ``interval`` seconds (a failure waits for the next)."""
        while True:
            await self.tick()
            await asyncio.sleep(self.interval)

    async def tick(self) -> None:
        """One :meth:`refresh`, logging (once per distinct problem) what goes wrong."""
        try:
            await self.refresh()
            self._warned = ""
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            text = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            problem = f"{type(exc).__name__}: {text}"
            if problem != self._warned:
                log.warning("relay directory not refreshed: %s", problem)
                self._warned = problem


class SigningKeeper(DirectoryKeeper):
    """The national node's keeper: signs the administered file's directory."""

    def __init__(
        self,
        *,
        path: Path | None,
        keys: NodeKeys,
        db: Database,
        store: DirectoryStore,
        clock: Clock,
        interval: float,
    ) -> None:
        super().__init__(db=db, store=store, trust=keys.trust, clock=clock, interval=interval)
        self.path = path
        self.keys = keys

    async def refresh(self) -> bool:
        """Sign a new serial when the file (or a certificate it names) changed, or the
        current directory expires within :data:`~jukinet.relay.directory.RESIGN_BEFORE`."""
        if self.path is None:
            return False
        async with self._lock:
            source: Source = await asyncio.to_thread(directories.read_source, self.path)
            now = self.clock.now()
            current = self.current
            if (
                current is not None
                and source.fingerprint == self._fingerprint
                and current.expires_at - now > directories.RESIGN_BEFORE
            ):
                return False
            signed = directories.sign(
                source,
                serial=(current.serial if current is not None else 0) + 1,
                issued_at=now,
                key=self.keys.key,
                certificate=self.keys.certificate,
            )
            await self.keep(directories.verify(signed, self.trust, now), source.fingerprint)
            return True


Fetch = Callable[..., Awaitable[relay_pb2.GetDirectoryResponse]]


class FetchingKeeper(DirectoryKeeper):
    """A prefecture's or municipality's keeper: asks the tier above (``fetch`` is its
    ``GetDirectory``) and keeps a newer directory once verified."""

    def __init__(
        self,
        *,
        db: Database,
        store: DirectoryStore,
        trust: Trust,
        clock: Clock,
        interval: float,
        fetch: Fetch | None = None,
    ) -> None:
        super().__init__(db=db, store=store, trust=trust, clock=clock, interval=interval)
        self.fetch = fetch
        """The tier above's ``GetDirectory``, set once its channel is open."""

    async def refresh(self) -> bool:
        """Ask for a directory newer than the one held; keep it if it verifies
        (:class:`DirectoryInvalid` if it does not: signed by another key than the national
        node's)."""
        if self.fetch is None:
            return False
        async with self._lock:
            serial = self.current.serial if self.current is not None else 0
            answer = await self.fetch(
                relay_pb2.GetDirectoryRequest(newer_than=serial), timeout=FETCH_TIMEOUT
            )
            if not answer.HasField("directory"):
                return False
            verified = directories.verify(answer.directory, self.trust, self.clock.now())
            if verified.serial <= serial:
                return False
            await self.keep(verified)
            return True


# --- the log ------------------------------------------------------------------------------


class RelayRecorder:
    """Appends the entry of each envelope to the node's operation log and counts it."""

    def __init__(self, db: Database, oplog: OperationLog, metrics: RelayMetrics, clock: Clock):
        self.db = db
        self.oplog = oplog
        self.metrics = metrics
        self.clock = clock

    def operation(
        self,
        sender: Identity,
        header: Header | None,
        error: JukinetError | None,
        *,
        residents: tuple[str, ...] = (),
        refusal: str = "",
    ) -> Operation:
        """The entry of one envelope ``sender`` handed this node (``header`` None: its
        header could not be read); ``refusal`` is the reason of a refusal answered."""
        status = "OK" if error is None else error.code.name
        outcome = outcome_of(status) if not refusal else "refused"
        reason = str(error.reason) if error is not None else refusal
        if isinstance(error, HopUnavailable) or (
            error is not None and error.code is grpc.StatusCode.UNAVAILABLE
        ):
            outcome = "failed"
        return Operation(
            time=self.clock.now(),
            operator=sender.uri,
            terminal=sender.uri,
            operation="Relay",
            resident_codes=residents,
            outcome=outcome,
            reason=reason,
            relay=None
            if header is None
            else Relayed(header.request_id, header.kind_label, header.source, header.destination),
        )

    async def record(self, operation: Operation, conn: Any = None) -> None:
        """Append ``operation`` (in ``conn``'s transaction, or one of its own) and count it."""
        if conn is not None:
            await self.oplog.append(conn, operation)
        else:
            async with self.db.write() as own:
                await self.oplog.append(own, operation)
        if operation.relay is not None:
            self.metrics.count(operation.relay.kind, operation.outcome)


# --- channels to the next hops ------------------------------------------------------------


class Channels:
    """mTLS channels to the nodes the directory lists, one per address, kept open."""

    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> relay_pb2_grpc.RelayServiceAsyncStub:
        """A RelayService stub to ``address``."""
        channel = self._channels.get(address)
        if channel is None:
            channel = secure_channel(address, self.tls)
            self._channels[address] = channel
        return relay_pb2_grpc.RelayServiceStub(channel)

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()


# --- a prefecture's or the national node's hop ----------------------------------------------

Route = Callable[[Identity, Header], Identity]


class RelayHop:
    """``Relay`` at a prefecture or the national node (see the module)."""

    def __init__(
        self,
        *,
        route: Route,
        directory: DirectoryKeeper,
        recorder: RelayRecorder,
        channels: Channels,
        clock: Clock,
        upward: tuple[Identity, relay_pb2_grpc.RelayServiceAsyncStub] | None = None,
    ) -> None:
        self.route = route
        self.directory = directory
        self.recorder = recorder
        self.channels = channels
        self.clock = clock
        self.upward = upward

    async def relay(
        self, caller: Identity, request: relay_pb2.RelayRequest
    ) -> relay_pb2.RelayResponse:
        """Check the envelope and its caller, pass it on, pass the answer back; log it."""
        header: Header | None = None
        error: JukinetError | None = None
        try:
            header = headers.parse(request.header, self.clock.now())
            following = self.route(caller, header)
            self.directory.usable()
            if self.upward is not None and following == self.upward[0]:
                stub = self.upward[1]
            else:
                stub = self.channels.stub((await self.directory.entry(following)).address)
            try:
                response: relay_pb2.RelayResponse = await stub.Relay(request, timeout=HOP_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                raise upstream_error(exc, following) from None
            if response.header != request.header:
                raise SealInvalid(f"{following.uri} answered for another envelope")
            return response
        except JukinetError as exc:
            error = exc
            raise
        except BaseException as exc:  # a fault here, or the call cancelled: failed
            error = JukinetError(type(exc).__name__)
            raise
        finally:
            await self.recorder.record(self.recorder.operation(caller, header, error))


# --- the gRPC surface, the same on every tier ------------------------------------------------

RelayCall = Callable[[Identity, relay_pb2.RelayRequest], Awaitable[relay_pb2.RelayResponse]]


class RelayServicer(relay_pb2_grpc.RelayServiceServicer):
    """The RelayService RPCs: ``relay`` is the node's hop or endpoint."""

    def __init__(self, relay: RelayCall, directory: DirectoryKeeper) -> None:
        self._relay = relay
        self._directory = directory

    async def Relay(self, request: relay_pb2.RelayRequest, context: Any) -> relay_pb2.RelayResponse:
        """Pass an envelope on (or answer it, at its destination); the access table says
        which kind of caller, the hop which caller for this envelope."""
        return await self._relay(current_identity(), request)

    async def GetDirectory(
        self, request: relay_pb2.GetDirectoryRequest, context: Any
    ) -> relay_pb2.GetDirectoryResponse:
        """The signed directory this node holds, when newer than the caller's."""
        return await self._directory.newer_than(request.newer_than)
