"""The operation log in a running node: its keys, the entry of every operator call,
the heads it signs and sends upward, and the witness of the tier below.

- **Keys.** A node's log key file (setting ``log_key``; by default
  ``<tls key>.log.key`` beside the TLS key) holds two signer key strings,
  one a line: the Ed25519 key that signs the node's heads (named as the
  log's origin, :func:`origin_of`) and the cosignature/v1 key with which the
  node witnesses the logs of the tier below (``<origin>/witness``). The PKI
  tooling writes it beside each node's certificate; a node that finds none
  makes one at its first start. The tier above learns a node's log key from
  its ``log_verifiers`` file (by default ``log-verifiers`` beside the CA
  certificate, which the PKI tooling writes): one verifier key a line,
  named by origin. A head of a log whose key is not listed there is refused.
- **Entries.** :class:`Recorder` is the interceptor's audit hook: every call
  of an operator identity to a method its node audits appends one entry
  after the call (ok, refused or failed, with the reason), in a transaction
  of its own. A write and its entry are not in one transaction: a crash
  between the two loses the entry of a write that committed. A unary call's
  entry is appended before its answer leaves: a call whose entry cannot be
  written fails, so no read leaves unlogged.
- **Heads.** :class:`CheckpointKeeper` signs a head every ``checkpoint_interval``
  seconds (and at shutdown) when the log grew, and sends each head not yet
  cosigned to the tier above with the consistency proof from the last one
  that was; the cosignature returned is kept beside the head.
- **Witness.** :class:`Witness` serves ``SubmitCheckpoint`` and
  ``GetCheckpoints`` on the tier above.
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

from jukinet.clock import Clock
from jukinet.db import Database
from jukinet.errors import ConfigError, FailedPrecondition, PermissionDenied
from jukinet.identity import Identity, Kind
from jukinet.oplog import note
from jukinet.oplog.entry import Operation
from jukinet.oplog.log import OperationLog, OplogTables, WitnessLog
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
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"log_key: cannot read {path}: {exc}") from None
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


def load_or_create_log_keys(path: Path, origin: str) -> LogKeys:
    """The keys of ``path``; made and written there first if the file does not exist."""
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            write_log_keys(path, new_log_keys(origin))
            log.warning(
                "made a new log key %s: the tier above refuses this node's heads until its "
                "log_verifiers lists %s",
                path,
                read_log_keys(path, origin).log.verifier.vkey,
            )
    return read_log_keys(path, origin)


def read_verifiers(path: Path) -> dict[str, note.Verifier]:
    """The log verifier keys of a ``log_verifiers`` file by origin; none if it is absent."""
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"log_verifiers: cannot read {path}: {exc}") from None
    found: dict[str, note.Verifier] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            verifier = note.parse_vkey(line)
        except note.NoteError as exc:
            raise ConfigError(f"log_verifiers: {path}:{number}: {exc}") from None
        if verifier.sig_type != note.ED25519:
            raise ConfigError(f"log_verifiers: {path}:{number}: not an Ed25519 log key")
        found[verifier.name] = verifier
    return found


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
    ) -> None:
        """Append the entry of one call."""
        operation = Operation(
            time=self.clock.now(),
            operator=identity.uri,
            terminal=terminal or "unknown",
            operation=method.rsplit("/", 1)[-1],
            resident_codes=tuple(dict.fromkeys(codes)),
            outcome=outcome_of(status),
            reason=reason,
        )
        async with self.db.write() as conn:
            await self.oplog.append(conn, operation)


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
    ) -> None:
        self.db = db
        self.oplog = oplog
        self.clock = clock
        self.interval = interval
        self.submit = submit
        self._warned = ""

    async def run(self) -> None:
        """Every ``interval`` seconds: sign and send; at cancellation, sign once more."""
        try:
            while True:
                await asyncio.sleep(self.interval)
                await self.tick()
        finally:
            with contextlib.suppress(Exception):
                async with self.db.write() as conn:
                    await self._sign_if_grown(conn)

    async def tick(self) -> None:
        """Sign a head if the log grew, then send the newest head not yet cosigned."""
        try:
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
        witness = note.parse_vkey(answer.witness_key)
        cosigned_note = note.parse_note(head.text + "\n" + answer.cosignature)
        async with self.db.write() as conn:
            await self.oplog.record_cosignature(
                conn, head.with_signature(cosigned_note.signatures[0]), witness
            )
        self._warned = ""
        return True

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
        self.keys = load_or_create_log_keys(log_key, self.origin)
        self.oplog = OperationLog(tables, self.origin, self.keys.log)
        self.recorder = Recorder(db, self.oplog, audited, clock)
        self.witness = Witness(db, tables, self.keys.witness, read_verifiers(verifiers), clock)
        self.keeper = CheckpointKeeper(db, self.oplog, clock, interval=interval, submit=None)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start signing and sending heads in the background."""
        self._task = asyncio.create_task(self.keeper.run(), name="checkpoints")

    async def stop(self) -> None:
        """Stop the keeper (which signs a last head if the log grew)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


def log_key_path(log_key: str, tls_key: Path) -> Path:
    """The ``log_key`` setting's file, or its default beside the TLS key."""
    return Path(log_key) if log_key else default_log_key_path(tls_key)


def verifiers_path(log_verifiers: str, ca: Path) -> Path:
    """The ``log_verifiers`` setting's file, or its default beside the CA certificate."""
    return Path(log_verifiers) if log_verifiers else default_verifiers_path(ca)
