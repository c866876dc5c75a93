"""The operation log in a running node: its keys, the entry of every operator call,
the heads it signs and sends upward, and the witness of the tier below.

- **Keys.** A node's log key file (setting ``log_key``; by default
  ``<tls key>.log.key`` beside the TLS key) holds two signer key strings,
  one a line: the Ed25519 key that signs the node's heads (named as the
  log's origin, :func:`origin_of`) and the cosignature/v1 key with which the
  node witnesses the logs of the tier below (``<origin>/witness``). The PKI
  tooling writes it beside each node's certificate; a node that finds none
  does not start (a key it made itself is one the tier above does not trust,
  and a node's key folder is often read-only). The tier above learns a
  node's log key from its ``log_verifiers`` file (by default
  ``log-verifiers`` beside the CA certificate, which the PKI tooling
  writes): one verifier key a line, named by origin, and each node's
  witness key (``<origin>/witness``), with which a resident checks a
  disclosure's proofs offline. A head of a log whose key is not listed
  there is refused.
- **Entries.** :class:`Recorder` is the interceptor's audit hook: every call
  of an operator identity to a method its node audits appends an entry (ok,
  refused or failed, with the reason). A write and its entry are in one
  transaction: the service writes with :meth:`~jukinet.db.Database.operation`,
  whose last statement appends the entry of the call bound to it (the
  interceptor binds it for the call, :func:`jukinet.db.bind_operation`), so
  a crash never leaves a committed write without its entry, nor an "ok"
  entry of a write that rolled back. Why a scope the transaction consumes
  rather than an entry passed by the service: the interceptor alone knows
  the caller, the terminal and the outcome, every write method gets it
  without code of its own, and the services name only the residents no
  message names (:func:`jukinet.db.touched`). Every other entry (a read, a
  refused or failed call, whose transaction rolled back) is appended after
  the call in a transaction of its own, before a unary answer leaves: a
  read whose entry cannot be written fails, so no read of a resident leaves
  unlogged.
- **A full disk.** A write is refused with its transaction (nothing of it,
  entry included, is stored). The entry of a refused or failed call and of
  a call naming no resident (a status) need not precede its answer: when
  the storage is full it is kept in memory (at most :data:`HELD_ENTRIES`,
  in order) and appended before the next entry a transaction of its own
  writes, or at the next head tick, once there is room. Such entries are
  lost if the node stops while the disk stays full.
- **Heads.** :class:`CheckpointKeeper` signs a head every ``checkpoint_interval``
  seconds (and at shutdown) when the log grew, and sends each head not yet
  cosigned to the tier above with the consistency proof from the last one
  that was; the cosignature returned is kept beside the head.
- **Witness.** :class:`Witness` serves ``SubmitCheckpoint`` and
  ``GetCheckpoints`` on the tier above.
- **The top tier.** The national node has no tier above: each prefecture
  witnesses its log (:class:`TopWitness`), fetching the newest national head
  with ``GetLogHead`` and the consistency proof from the one it holds,
  checking it with the same :class:`Witness` code as a head sent from below,
  and returning its cosignature with ``CosignLogHead``
  (:meth:`CheckpointKeeper.cosigned_by`), which the national node keeps
  beside its head as a lower tier keeps the cosignature of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import grpc.aio
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from jukinet.clock import Clock
from jukinet.db import Database
from jukinet.errors import ConfigError, FailedPrecondition, PermissionDenied, StorageFull
from jukinet.identity import Identity, Kind
from jukinet.oplog import note
from jukinet.oplog.entry import Operation
from jukinet.oplog.log import LogError, OperationLog, OplogTables, WitnessLog
from jukinet.oplog.verify import WitnessError
from jukinet.reasons import Reason
from jukinet.v1 import oplog_pb2

log = logging.getLogger("jukinet.audit")

_ORIGIN_PREFIX = "jukinet/"
VERIFIERS_FILE = "log-verifiers"
"""The file of log verifier keys the PKI tooling writes beside the CA certificate."""


# --- origins and keys ------------------------------------------------------------


def origin_of(identity: Identity) -> str:
    """The origin (and log key name) of a node's log: ``jukinet/municipality/131016``."""
    if identity.kind is Kind.NATIONAL:
        return f"{_ORIGIN_PREFIX}national"
    if identity.kind in (Kind.MUNICIPALITY, Kind.PREFECTURE):
        return f"{_ORIGIN_PREFIX}{identity.kind.value}/{identity.code}"
    raise ValueError(f"{identity.uri} keeps no operation log")


@dataclass(frozen=True)
class LogKeys:
    """A node's log key (signs its heads) and witness key (cosigns the tier below's)."""

    log: note.Signer
    witness: note.Signer


def default_log_key_path(tls_key: Path) -> Path:
    """Where a node's log key file is when ``log_key`` is not set: beside its TLS key."""
    return tls_key.with_name(tls_key.stem + ".log.key")


def new_log_keys(origin: str) -> LogKeys:
    """Fresh keys for the log of ``origin``."""
    return LogKeys(
        note.Signer.generate(origin, note.ED25519),
        note.Signer.generate(f"{origin}/witness", note.COSIGNATURE_V1),
    )


def write_log_keys(path: Path, keys: LogKeys) -> None:
    """Write a log key file (owner-only), replacing none: :class:`FileExistsError` if present."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(f"{keys.log.skey}\n{keys.witness.skey}\n")


def read_log_keys(path: Path, origin: str) -> LogKeys:
    """The keys of a log key file, checked to be ``origin``'s; :class:`ConfigError` if not."""
    try:
        lines = path.read_text(encoding="ascii").split()
        signers = [note.parse_skey(line) for line in lines]
    except FileNotFoundError:
        raise ConfigError(
            f"log_key: {path}: not found (`jukinet pki federation` writes each node's "
            "log key beside its certificate; a node does not make its own, since the "
            "tier above trusts only the keys listed in its log-verifiers)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"log_key: {path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"log_key: {path}: not a log key file: {exc}") from None
    except note.NoteError as exc:
        raise ConfigError(f"log_key: {path}: {exc}") from None
    if len(signers) != 2:
        raise ConfigError(f"log_key: {path}: expected two keys (log and witness), one a line")
    keys = LogKeys(*signers)
    if keys.log.name != origin or keys.log.sig_type != note.ED25519:
        raise ConfigError(f"log_key: {path}: the first key is not an Ed25519 key named {origin}")
    if keys.witness.sig_type != note.COSIGNATURE_V1:
        raise ConfigError(f"log_key: {path}: the second key is not a cosignature/v1 key")
    return keys


def _read_keys(path: Path) -> list[note.Verifier]:
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"log_verifiers: cannot read {path}: {exc}") from None
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            verifier = note.parse_vkey(line)
        except note.NoteError as exc:
            raise ConfigError(f"log_verifiers: {path}:{number}: {exc}") from None
        if verifier.sig_type not in (note.ED25519, note.COSIGNATURE_V1):
            raise ConfigError(f"log_verifiers: {path}:{number}: not a log or witness key")
        found.append(verifier)
    return found


def read_verifiers(path: Path) -> dict[str, note.Verifier]:
    """The log verifier keys (Ed25519) of a ``log_verifiers`` file by origin; none if it
    is absent. The file also lists the nodes' witness keys (:func:`read_witness_keys`)."""
    return {v.name: v for v in _read_keys(path) if v.sig_type == note.ED25519}


def read_witness_keys(path: Path) -> list[note.Verifier]:
    """The witness keys (cosignature/v1) of a ``log_verifiers`` file; none if it is absent."""
    return [v for v in _read_keys(path) if v.sig_type == note.COSIGNATURE_V1]


def default_verifiers_path(ca: Path) -> Path:
    """Where ``log_verifiers`` is when not set: beside the CA certificate."""
    return ca.with_name(VERIFIERS_FILE)


# --- which residents a call touches ----------------------------------------------

Extractor: TypeAlias = Callable[[Message], Iterable[str]]
"""The resident codes one request or response message of a method names."""

_CODE_FIELDS = frozenset({"resident_code", "previous_resident_code", "resident_codes"})


def resident_codes_in(message: Message) -> Iterable[str]:
    """Every resident code a message holds, at any depth (fields named ``*resident_code*``)."""
    for field, value in message.ListFields():
        if field.type == FieldDescriptor.TYPE_MESSAGE:
            items = value if _repeated(field) else [value]
            for item in items:
                yield from resident_codes_in(item)
        elif field.name in _CODE_FIELDS:
            for code in value if _repeated(field) else [value]:
                if code and str(code).isdigit():
                    yield str(code)


def _repeated(field: FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def no_residents(message: Message) -> Iterable[str]:
    """For a method that touches no resident (a status, a summary)."""
    return ()


def audit_table(
    service: ServiceDescriptor, audited: Mapping[str, Extractor]
) -> dict[str, Extractor]:
    """The audit table of a service by full method name, every one of its methods listed.

    ``audited`` maps each method to how its messages name residents. Only
    operators' calls are logged, but every method is listed (an operator's
    refused call to a node-to-node method is logged too), and a method
    missing from the table stops the node at start-up, so a new one cannot
    be forgotten.
    """
    service_name = service.full_name
    methods = set(service.methods_by_name)
    missing = sorted(methods - set(audited))
    unknown = sorted(set(audited) - methods)
    if missing or unknown:
        raise ValueError(
            f"{service_name}: audit table: no extractor for {missing}, not methods {unknown}"
        )
    return {f"/{service_name}/{m}": extract for m, extract in audited.items()}


# --- recording calls -------------------------------------------------------------

_REFUSALS = frozenset(
    {
        "INVALID_ARGUMENT",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "FAILED_PRECONDITION",
        "UNAUTHENTICATED",
        "OUT_OF_RANGE",
        "RESOURCE_EXHAUSTED",
    }
)


def outcome_of(status: str) -> str:
    """``ok``, ``refused`` (the caller or the state said no) or ``failed``, from a status name."""
    if status == "OK":
        return "ok"
    return "refused" if status in _REFUSALS else "failed"


HELD_ENTRIES = 10_000
"""How many entries a node keeps in memory while its storage is full."""


class Recorder:
    """Appends the entry of each audited operator call to the node's log."""

    def __init__(
        self,
        db: Database,
        oplog: OperationLog,
        audited: Mapping[str, Extractor],
        clock: Clock,
    ) -> None:
        self.db = db
        self.oplog = oplog
        self.audited = dict(audited)
        self.clock = clock
        self.held: list[Operation] = []

    def extractor(self, method: str, identity: Identity | None) -> Extractor | None:
        """How to read the codes of a call, or None if the call is not audited."""
        # A terminal's calls are an operator's (the one logged in, or logging in there).
        if identity is None or identity.kind not in (Kind.OPERATOR, Kind.TERMINAL):
            return None
        return self.audited.get(method)

    async def record(
        self,
        method: str,
        identity: Identity,
        terminal: str,
        codes: Iterable[str],
        status: str,
        reason: str,
        conn: AsyncConnection | None = None,
    ) -> None:
        """Append the entry of one call: in ``conn``'s transaction (a write's), or
        in one of its own (see the module on a full disk)."""
        operation = Operation(
            time=self.clock.now(),
            operator=identity.uri,
            terminal=terminal or "unknown",
            operation=method.rsplit("/", 1)[-1],
            resident_codes=tuple(dict.fromkeys(codes)),
            outcome=outcome_of(status),
            reason=reason,
        )
        if conn is not None:
            await self.oplog.append(conn, operation)
            return
        try:
            await self.flush(operation)
        except StorageFull:
            if (operation.outcome == "ok" and operation.resident_codes) or len(
                self.held
            ) >= HELD_ENTRIES:
                raise
            self.held.append(operation)

    async def flush(self, operation: Operation | None = None) -> None:
        """Append the entries held (if any) and then ``operation``, in one transaction."""
        if not self.held and operation is None:
            return
        async with self.db.write() as conn:
            held = list(self.held)  # under the write lock: no other flush has them
            for waiting in held:
                await self.oplog.append(conn, waiting)
            if operation is not None:
                await self.oplog.append(conn, operation)
        # Committed; entries held meanwhile came after them and stay.
        del self.held[: len(held)]


# --- heads -----------------------------------------------------------------------

Submit: TypeAlias = Callable[[oplog_pb2.SubmitCheckpointRequest], Awaitable[Any]]


class CheckpointKeeper:
    """Signs the node's heads at an interval and has the tier above witness them."""

    def __init__(
        self,
        db: Database,
        oplog: OperationLog,
        clock: Clock,
        *,
        interval: float,
        submit: Submit | None,
        flush: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.db = db
        self.oplog = oplog
        self.clock = clock
        self.interval = interval
        self.submit = submit
        # The witness keys of the tier below, by name, where log_verifiers lists them:
        # a cosignature returned (CosignLogHead) must be made with the one listed.
        self.witnesses: dict[str, note.Verifier] = {}
        self.flush = flush
        self._warned = ""

    async def run(self) -> None:
        """Every ``interval`` seconds: sign and send; at cancellation, sign once more."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.tick()
        finally:
            with contextlib.suppress(Exception):
                if self.flush is not None:
                    await self.flush()
            with contextlib.suppress(Exception):
                async with self.db.write() as conn:
                    await self._sign_if_grown(conn)

    async def tick(self) -> None:
        """Append the entries held, sign a head if the log grew, then send the newest
        head not yet cosigned."""
        try:
            if self.flush is not None:
                await self.flush()
            async with self.db.write() as conn:
                await self._sign_if_grown(conn)
            await self.send()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next tick tries again
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            self._warn(f"{type(exc).__name__}: {details}")

    async def _sign_if_grown(self, conn: Any) -> None:
        frontier = await self.oplog.frontier(conn)
        if frontier.size > 0 and await self.oplog.head(conn, frontier.size) is None:
            await self.oplog.sign_head(conn, self.clock.now())

    async def send(self) -> bool:
        """Send the newest head if it has no cosignature yet; whether one came back."""
        if self.submit is None:
            return False
        t = self.oplog.tables
        async with self.db.read() as conn:
            newest = (await conn.execute(select(func.max(t.heads.c.tree_size)))).scalar()
            cosigned = (await conn.execute(select(func.max(t.cosignatures.c.tree_size)))).scalar()
            if newest is None or (cosigned is not None and cosigned >= newest):
                return False
            head = await self.oplog.head(conn, int(newest))
            old = int(cosigned or 0)
            proof = await self.oplog.consistency_proof(conn, old, int(newest)) if old else []
        assert head is not None
        answer = await self.submit(
            oplog_pb2.SubmitCheckpointRequest(checkpoint=head.encode(), old_size=old, proof=proof)
        )
        await self.keep(head.text, answer.cosignature, note.parse_vkey(answer.witness_key))
        self._warned = ""
        return True

    async def keep(self, text: str, cosignature: str, witness: note.Verifier) -> None:
        """Keep ``witness``'s cosignature line of this log's head of text ``text``, once
        verified (:meth:`OperationLog.record_cosignature`)."""
        cosigned_note = note.parse_note(text + "\n" + cosignature)
        async with self.db.write() as conn:
            await self.oplog.record_cosignature(conn, cosigned_note, witness)

    async def newest_head(self, old_size: int) -> oplog_pb2.GetLogHeadResponse:
        """This log's newest signed head (its own signature only) and the consistency
        proof from ``old_size``, for a witness that fetches heads rather than receives them."""
        t = self.oplog.tables
        async with self.db.read() as conn:
            newest = (await conn.execute(select(func.max(t.heads.c.tree_size)))).scalar()
            if newest is None:
                return oplog_pb2.GetLogHeadResponse()
            if old_size > newest:
                raise FailedPrecondition(
                    f"old_size {old_size} is beyond the newest head ({newest})",
                    reason=Reason.CHECKPOINT_INCONSISTENT,
                )
            head = await self.oplog.head(conn, int(newest))
            proof = (
                await self.oplog.consistency_proof(conn, old_size, int(newest))
                if 0 < old_size < newest
                else []
            )
        assert head is not None
        own = note.Note(head.text, head.signatures[:1])  # the log key signs first
        return oplog_pb2.GetLogHeadResponse(checkpoint=own.encode(), proof=proof)

    async def cosigned_by(
        self, caller: Identity, request: oplog_pb2.CosignLogHeadRequest
    ) -> oplog_pb2.CosignLogHeadResponse:
        """Keep the cosignature a node of the tier below returns for one of this log's
        heads; its witness key must be named as the caller's (``<origin>/witness``)."""
        try:
            witness = note.parse_vkey(request.witness_key)
            signed = note.parse_note(request.checkpoint)
        except note.NoteError as exc:
            raise FailedPrecondition(
                f"the cosignature cannot be read: {exc}", reason=Reason.CHECKPOINT_INCONSISTENT
            ) from None
        expected = f"{origin_of(caller)}/witness"
        known = self.witnesses.get(expected)
        if (
            witness.name != expected
            or witness.sig_type != note.COSIGNATURE_V1
            or (known is not None and known != witness)
        ):
            raise PermissionDenied(
                f"{caller.uri} cosigns with its own witness key {expected} only",
                reason=Reason.CHECKPOINT_FOREIGN,
            )
        try:
            await self.keep(signed.text, request.cosignature, witness)
        except (note.NoteError, LogError) as exc:
            raise FailedPrecondition(
                f"cosignature refused: {exc}", reason=Reason.CHECKPOINT_INCONSISTENT
            ) from None
        return oplog_pb2.CosignLogHeadResponse()

    def _warn(self, problem: str) -> None:
        if problem != self._warned:  # once per distinct problem, not every tick
            log.warning("operation log head not witnessed: %s", problem)
            self._warned = problem


# --- the witness of the tier below ------------------------------------------------


class Witness:
    """Keeps and cosigns the heads of the logs of the tier below."""

    def __init__(
        self,
        db: Database,
        tables: OplogTables,
        signer: note.Signer,
        verifiers: Mapping[str, note.Verifier],
        clock: Clock,
    ) -> None:
        self.db = db
        self.witness_log = WitnessLog(tables, signer)
        self.verifiers = dict(verifiers)
        self.clock = clock

    async def submit(
        self, caller: Identity, request: oplog_pb2.SubmitCheckpointRequest
    ) -> oplog_pb2.SubmitCheckpointResponse:
        """Check, keep and cosign the head ``caller`` sends of its own log."""
        try:
            signed = note.parse_note(request.checkpoint)
            checkpoint = note.parse_checkpoint(signed.text)
        except note.NoteError as exc:
            raise FailedPrecondition(
                f"the checkpoint cannot be read: {exc}", reason=Reason.CHECKPOINT_INCONSISTENT
            ) from None
        own = origin_of(caller)
        if checkpoint.origin != own:
            raise PermissionDenied(
                f"{caller.uri} sends heads of its own log {own}, not of {checkpoint.origin}",
                reason=Reason.CHECKPOINT_FOREIGN,
            )
        key = self.verifiers.get(own)
        if key is None:
            raise FailedPrecondition(
                f"no log key is configured here for {own} (log_verifiers)",
                reason=Reason.LOG_KEY_UNKNOWN,
            )
        async with self.db.write() as conn:
            held = await self.witness_log.latest(conn, own)
            held_size = 0 if held is None else note.parse_checkpoint(held.text).size
            resent = held is not None and held.text == signed.text
            if request.old_size != held_size and not resent:
                raise FailedPrecondition(
                    f"the proof is from size {request.old_size}; the head held is of {held_size}",
                    reason=Reason.CHECKPOINT_INCONSISTENT,
                )
            try:
                sig = await self.witness_log.witness(
                    conn, signed, list(request.proof), key, self.clock.now()
                )
            except WitnessError as exc:
                log.warning("refused a head of %s: %s", own, exc)
                raise FailedPrecondition(
                    f"head refused: {exc}", reason=Reason.CHECKPOINT_INCONSISTENT
                ) from None
        return oplog_pb2.SubmitCheckpointResponse(
            cosignature=sig.line(), witness_key=self.witness_log.verifier.vkey
        )

    async def checkpoints(
        self, caller: Identity, request: oplog_pb2.GetCheckpointsRequest
    ) -> oplog_pb2.GetCheckpointsResponse:
        """The heads held for a log: a node reads its own; an operator of this tier, any."""
        if caller.kind is not Kind.OPERATOR and origin_of(caller) != request.origin:
            raise PermissionDenied(
                f"{caller.uri} reads the heads of its own log only",
                reason=Reason.CHECKPOINT_FOREIGN,
            )
        async with self.db.read() as conn:
            held = await self.witness_log.held(conn, request.origin)
        return oplog_pb2.GetCheckpointsResponse(
            checkpoints=[h.encode() for h in held], witness_key=self.witness_log.verifier.vkey
        )


Fetch: TypeAlias = Callable[[oplog_pb2.GetLogHeadRequest], Awaitable[Any]]
Cosign: TypeAlias = Callable[[oplog_pb2.CosignLogHeadRequest], Awaitable[Any]]


class TopWitness:
    """Witnesses the log of the tier above, which has no tier above it (the national log).

    Every ``interval`` seconds it fetches that log's newest head with the
    consistency proof from the head held here, checks and keeps it exactly as
    :meth:`Witness.submit` does for a head sent from below, and returns the
    cosignature. A head that does not extend the one held (a fork, a rewritten
    log) is refused and logged, and nothing is returned for it.
    """

    def __init__(
        self,
        witness: Witness,
        above: Identity,
        fetch: Fetch,
        cosign: Cosign,
        *,
        interval: float,
    ) -> None:
        self.witness = witness
        self.above = above
        self.fetch = fetch
        self.cosign = cosign
        self.interval = interval
        self._warned = ""

    async def run(self) -> None:
        """Every ``interval`` seconds, :meth:`tick`."""
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()

    async def tick(self) -> bool:
        """Fetch, witness and cosign the newest head; whether a cosignature was returned."""
        try:
            return await self.once()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next tick tries again
            details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
            problem = f"{type(exc).__name__}: {details}"
            if problem != self._warned:
                log.warning("head of %s not witnessed: %s", origin_of(self.above), problem)
                self._warned = problem
            return False

    async def once(self) -> bool:
        """As :meth:`tick`, raising what goes wrong."""
        origin = origin_of(self.above)
        async with self.witness.db.read() as conn:
            held = await self.witness.witness_log.held(conn, origin)
        old = note.parse_checkpoint(held[-1].text).size if held else 0
        answer = await self.fetch(oplog_pb2.GetLogHeadRequest(old_size=old))
        if not answer.checkpoint:
            return False
        cosigned = await self.witness.submit(
            self.above,
            oplog_pb2.SubmitCheckpointRequest(
                checkpoint=answer.checkpoint, old_size=old, proof=list(answer.proof)
            ),
        )
        await self.cosign(
            oplog_pb2.CosignLogHeadRequest(
                checkpoint=answer.checkpoint,
                cosignature=cosigned.cosignature,
                witness_key=cosigned.witness_key,
            )
        )
        self._warned = ""
        return True


# --- one node's log, wired ---------------------------------------------------------


class NodeLog:
    """A node's operation log with its recorder, its checkpoint keeper and its witness.

    ``audited`` is the node's audit table (:func:`audit_table`). Set
    :attr:`CheckpointKeeper.submit` on :attr:`keeper` to the tier above's
    ``SubmitCheckpoint`` once the channel to it is open (the national node
    has none).
    """

    def __init__(
        self,
        *,
        identity: Identity,
        db: Database,
        tables: OplogTables,
        audited: Mapping[str, Extractor],
        clock: Clock,
        log_key: Path,
        verifiers: Path,
        interval: float,
    ) -> None:
        self.origin = origin_of(identity)
        self.keys = read_log_keys(log_key, self.origin)
        self.oplog = OperationLog(tables, self.origin, self.keys.log)
        self.recorder = Recorder(db, self.oplog, audited, clock)
        self.witness = Witness(db, tables, self.keys.witness, read_verifiers(verifiers), clock)
        self.keeper = CheckpointKeeper(
            db, self.oplog, clock, interval=interval, submit=None, flush=self.recorder.flush
        )
        self.keeper.witnesses = {w.name: w for w in read_witness_keys(verifiers)}
        self.interval = interval
        self.top: TopWitness | None = None
        self._task: asyncio.Task[None] | None = None
        self._top_task: asyncio.Task[None] | None = None

    def witness_top(self, above: Identity, fetch: Fetch, cosign: Cosign) -> TopWitness:
        """Also witness the log of ``above``, the top tier (see :class:`TopWitness`)."""
        self.top = TopWitness(self.witness, above, fetch, cosign, interval=self.interval)
        return self.top

    def start(self) -> None:
        """Start signing and sending heads (and witnessing the top tier's) in the background."""
        self._task = asyncio.create_task(self.keeper.run(), name="checkpoints")
        if self.top is not None:
            self._top_task = asyncio.create_task(self.top.run(), name="top-witness")

    async def stop(self) -> None:
        """Stop the keeper (which signs a last head if the log grew)."""
        for task in (self._top_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._top_task = None


def log_key_path(log_key: str, tls_key: Path) -> Path:
    """The ``log_key`` setting's file, or its default beside the TLS key."""
    return Path(log_key) if log_key else default_log_key_path(tls_key)


def verifiers_path(log_verifiers: str, ca: Path) -> Path:
    """The ``log_verifiers`` setting's file, or its default beside the CA certificate."""
    return Path(log_verifiers) if log_verifiers else default_verifiers_path(ca)
