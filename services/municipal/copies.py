"""Copies of resident records issued at any municipality (住民票の写しの広域交付).

Two ends, one node each (or both in one node when the applicant lives here):

- **The issuing municipality C** (:meth:`Copies.issue`, the ``IssueCopy`` rpc):
  its operator has seen the applicant's photo ID or checked their resident card
  here (the card's proof of identity, :meth:`ResidentCards.prove`); C asks the
  applicant's home municipality B for the contents over the relay
  (``RELAY_KIND_COPY``), prints them as a Japanese PDF and signs it with its
  document-signing key (:mod:`jukinet.copydoc`), off the event loop. The
  interceptor logs the call in C's operation log (operator, terminal, residents).
- **The home municipality B** (:meth:`Copies.answer_relayed`, the relay handler,
  or :meth:`Copies.answer` directly when B is C): the applicant must be a current
  resident here, every member asked for a current member of the applicant's
  household, and a card the applicant proved their identity with the
  applicant's valid card of this register. The answer never carries the
  domicile or its head; the relationship and the resident code only when
  asked. B records who asked (C, C's operator and terminal), when and whose
  entries the copy shows, for the residents' disclosure
  (:meth:`Copies.disclosed`), and logs it in its operation log
  (``AnswerCopy``, with C's operator and terminal), refusals included.

Who may ask B for a copy: any municipality, through the relay (the envelope's
source is verified by its signature); what B checks is the object: the
applicant and the household. B takes C's word for what its operator saw (a
photo ID): that is the law's model of the counter, and C's operator and
terminal are on B's record of every copy.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections.abc import Sequence

import grpc
from google.protobuf.message import DecodeError

from jukinet import copydoc
from jukinet.clock import SYSTEM_CLOCK, Clock
from jukinet.codes import check_local_government_code, check_resident_code
from jukinet.db import Database
from jukinet.errors import (
    FailedPrecondition,
    InvalidArgument,
    JukinetError,
    NotFound,
    PermissionDenied,
    Upstream,
)
from jukinet.identity import Kind, parse_identity_uri
from jukinet.interceptors import current_identity, current_terminal
from jukinet.login import as_utc
from jukinet.oplog.entry import Operation, Relayed
from jukinet.oplog.log import OperationLog
from jukinet.reasons import Reason
from jukinet.relay.endpoint import RelayClient, RelayRefused
from jukinet.relay.header import Header, new_request_id
from jukinet.v1 import municipal_pb2, provision_pb2, relay_pb2
from services.municipal import repository as repo
from services.municipal.cards import ResidentCards
from services.municipal.logic import ACTIVE, ResidentState, copy_entry

log = logging.getLogger("jukinet.municipal.copies")

MAX_COPY_MEMBERS = 50
"""At most this many entries on one copy (a household larger than that asks twice)."""
ANSWER_OPERATION = "AnswerCopy"
"""The operation log entry of a copy request answered (or refused) at the home municipality."""

_CARD_ID = re.compile(r"[0-9a-f]{32}")
_PHOTO_ID = municipal_pb2.APPLICANT_IDENTIFICATION_PHOTO_ID
_RESIDENT_CARD = municipal_pb2.APPLICANT_IDENTIFICATION_RESIDENT_CARD
# A refusal of the home municipality, as C answers its operator: the status its
# reason stands for (the relay carries the reason, not the status).
_REFUSED_AS: dict[str, type[JukinetError]] = {
    Reason.NOT_FOUND: NotFound,
    Reason.NOT_HOUSEHOLD_MEMBER: PermissionDenied,
    Reason.CARD_NOT_HOLDERS: PermissionDenied,
    Reason.CARD_REVOKED: PermissionDenied,
    Reason.CARD_LAPSED: PermissionDenied,
    Reason.NOT_REGISTERED: FailedPrecondition,
}


def _refused(exc: RelayRefused, home: str) -> JukinetError:
    kind = _REFUSED_AS.get(exc.wire_reason)
    if kind is None:
        return exc
    return kind(f"the home municipality {home} refused: {exc.message}", reason=exc.reason)


def _member_of(uri: str, kind: Kind, source: str, field: str) -> str:
    """``uri`` if it names an operator (or terminal) of municipality ``source``."""
    try:
        identity = parse_identity_uri(uri)
    except ValueError as exc:
        raise InvalidArgument(field, str(exc)) from None
    if identity.kind is not kind or identity.org != source:
        raise InvalidArgument(field, f"is not a {kind.value} of {source}")
    return identity.uri


def check_members(codes: Sequence[str], field: str) -> list[str]:
    """The household members a copy asks for: resident codes, each once, at most
    :data:`MAX_COPY_MEMBERS`."""
    members = [check_resident_code(code, f"{field}[{i}]") for i, code in enumerate(codes)]
    if len(members) > MAX_COPY_MEMBERS:
        raise InvalidArgument(field, f"at most {MAX_COPY_MEMBERS} on one copy")
    if len(set(members)) != len(members):
        raise InvalidArgument(field, "a resident is asked for twice")
    return members


def check_copy_request(request: relay_pb2.CopyRequest, source: str) -> list[str]:
    """The residents a copy request asks for, checked (the applicant's code, the
    members', an issuer's operator and terminal of ``source``, a card id)."""
    check_resident_code(request.resident_code)
    members = check_members(request.member_codes, "member_codes")
    _member_of(request.operator, Kind.OPERATOR, source, "operator")
    _member_of(request.terminal, Kind.TERMINAL, source, "terminal")
    if request.card_id and not _CARD_ID.fullmatch(request.card_id):
        raise InvalidArgument("card_id", "must be 32 lowercase hex digits")
    return members or [request.resident_code]


class Copies:
    """Both ends of a copy of a resident record issued anywhere (see the module)."""

    def __init__(
        self,
        *,
        db: Database,
        municipality: str,
        oplog: OperationLog,
        cards: ResidentCards,
        signer: copydoc.DocumentSigner,
        fonts: copydoc.Fonts,
        relay: RelayClient | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.db = db
        self.municipality = municipality
        self.oplog = oplog
        self.cards = cards
        self.signer = signer
        self.fonts = fonts
        self.relay = relay
        self.clock = clock

    # -- at the issuing municipality C --------------------------------------------

    async def issue(self, req: municipal_pb2.IssueCopyRequest) -> municipal_pb2.IssueCopyResponse:
        """Issue a copy at this counter: the contents from the applicant's home
        municipality (here, or over the relay), printed and signed here."""
        check_resident_code(req.resident_code)
        home = req.home_local_government_code
        if home or req.identification != _RESIDENT_CARD:
            check_local_government_code(home, "home_local_government_code")
        members = check_members(req.member_resident_codes, "member_resident_codes")
        if req.identification == _PHOTO_ID:
            if req.HasField("card_proof"):
                raise InvalidArgument("card_proof", "only with identification RESIDENT_CARD")
        elif req.identification == _RESIDENT_CARD:
            if not req.HasField("card_proof"):
                raise InvalidArgument("card_proof", "required with identification RESIDENT_CARD")
        else:
            raise InvalidArgument(
                "identification", "how the applicant was identified: PHOTO_ID or RESIDENT_CARD"
            )
        terminal = current_terminal()
        if terminal is None:
            raise PermissionDenied(
                "only a counter terminal issues copies", reason=Reason.WRONG_IDENTITY
            )
        operator = current_identity()
        card_id = ""
        if req.identification == _RESIDENT_CARD:
            proof = req.card_proof
            holder, _ = await self.cards.prove(
                terminal, proof.nonce, proof.card_certificate, proof.signature
            )
            # A valid card is its holder's home municipality's (a card continued
            # after a move is certified again by the new one).
            home = home or holder.municipality
            if holder.municipality != home:
                raise PermissionDenied(
                    f"the card was issued by {holder.municipality}, not by the applicant's "
                    f"home municipality {home}: it is not the applicant's card",
                    reason=Reason.CARD_NOT_HOLDERS,
                )
            card_id = holder.card_id
        request = relay_pb2.CopyRequest(
            resident_code=req.resident_code,
            member_codes=members,
            include_relationship=req.include_relationship,
            include_resident_code=req.include_resident_code,
            operator=operator.uri,
            terminal=terminal.uri,
            card_id=card_id,
        )
        request_id = new_request_id()
        if home == self.municipality:
            answer = await self.answer(request, self.municipality, request_id)
        else:
            answer = await self._ask(home, request, request_id)
        issued_at = self.clock.now()
        document = await asyncio.to_thread(self._print, answer, operator.uri, issued_at)
        return municipal_pb2.IssueCopyResponse(
            document=document,
            request_id=request_id,
            issued_at=issued_at.astimezone(dt.UTC).isoformat(),
        )

    async def _ask(
        self, home: str, request: relay_pb2.CopyRequest, request_id: str
    ) -> relay_pb2.CopyAnswer:
        """The home municipality's answer over the relay, checked for what was asked."""
        if self.relay is None:
            raise FailedPrecondition("this node sends no relayed requests")
        try:
            raw = await self.relay.send(
                home, relay_pb2.RELAY_KIND_COPY, request, request_id=request_id
            )
        except RelayRefused as exc:
            raise _refused(exc, home) from None
        try:
            answer = relay_pb2.CopyAnswer.FromString(raw)
        except DecodeError:
            raise Upstream(
                grpc.StatusCode.INTERNAL, f"{home} answered with no CopyAnswer", peer=home
            ) from None
        asked = len(request.member_codes) or 1
        if answer.local_government_code != home or len(answer.entries) != asked:
            raise Upstream(
                grpc.StatusCode.INTERNAL, f"{home} answered for another request", peer=home
            )
        return answer

    def _print(self, answer: relay_pb2.CopyAnswer, operator: str, at: dt.datetime) -> bytes:
        """The signed PDF (CPU-bound: in a thread)."""
        pdf = copydoc.render_copy(
            answer, issuer=self.municipality, operator=operator, issued_at=at, fonts=self.fonts
        )
        return self.signer.sign(pdf)

    # -- at the home municipality B -------------------------------------------------

    async def answer_relayed(self, header: Header, body: bytes) -> relay_pb2.CopyAnswer:
        """The relay handler of ``RELAY_KIND_COPY``: municipality ``header.source``
        (verified by the relay) asks for a copy's contents."""
        try:
            request = relay_pb2.CopyRequest.FromString(body)
        except DecodeError:
            raise InvalidArgument("body", "is not a CopyRequest") from None
        return await self.answer(request, header.source, header.request_id, header)

    async def answer(
        self,
        request: relay_pb2.CopyRequest,
        source: str,
        request_id: str,
        header: Header | None = None,
    ) -> relay_pb2.CopyAnswer:
        """The contents of the copy ``source`` asks for (see the module); recorded once
        per ``request_id`` and logged, a refusal logged too."""
        wanted = check_copy_request(request, source)
        relayed = (
            None
            if header is None
            else Relayed(header.request_id, header.kind_label, header.source, header.destination)
        )
        codes = tuple(dict.fromkeys([request.resident_code, *wanted]))
        try:
            applicant, residents = await self._residents(request, wanted)
            answer = await self._contents(request, applicant, residents)
        except JukinetError as exc:
            await self._log(request, codes, relayed, exc)
            raise
        async with self.db.write() as conn:
            # A request answered again (a retry after a crash) is not recorded twice.
            if not await repo.copy_recorded(conn, request_id):
                await repo.record_copy(
                    conn,
                    request_id=request_id,
                    requested_at=self.clock.now(),
                    issuer=source,
                    operator=request.operator,
                    terminal=request.terminal,
                    applicant=applicant,
                    card_id=request.card_id,
                    relationship_shown=request.include_relationship,
                    code_shown=request.include_resident_code,
                    residents=residents,
                )
                await self.oplog.append(conn, self._operation(request, codes, relayed, None))
        log.info("copy of %d entries answered for %s", len(residents), source)
        return answer

    async def _residents(
        self, request: relay_pb2.CopyRequest, wanted: Sequence[str]
    ) -> tuple[ResidentState, list[ResidentState]]:
        """The applicant and the entries asked for, each checked."""
        async with self.db.read() as conn:
            applicant = await repo.resident_by_code(conn, request.resident_code)
            if applicant is None:
                raise NotFound(f"the applicant is not in the register of {self.municipality}")
            applicant.require_active()
            if request.card_id:
                card = await repo.card_by_id(conn, request.card_id)
                if card is None or card.resident_id != applicant.id:
                    raise PermissionDenied(
                        f"resident card {request.card_id} is not the applicant's",
                        reason=Reason.CARD_NOT_HOLDERS,
                    )
                if card.status != repo.CARD_VALID:
                    raise PermissionDenied(
                        f"resident card {request.card_id} is {card.status}",
                        reason=Reason.CARD_LAPSED
                        if card.status == repo.CARD_LAPSED
                        else Reason.CARD_REVOKED,
                    )
            residents = []
            for i, code in enumerate(wanted):
                found = (
                    applicant
                    if code == request.resident_code
                    else await repo.resident_by_code(conn, code)
                )
                # The same answer whether the code is unknown, elsewhere or removed:
                # a copy request learns nothing of residents outside the household.
                if (
                    found is None
                    or found.status != ACTIVE
                    or found.household_id != applicant.household_id
                ):
                    raise PermissionDenied(
                        f"member_codes[{i}] is not a current member of the applicant's household",
                        reason=Reason.NOT_HOUSEHOLD_MEMBER,
                    )
                residents.append(found)
        return applicant, residents

    async def _contents(
        self,
        request: relay_pb2.CopyRequest,
        applicant: ResidentState,
        residents: Sequence[ResidentState],
    ) -> relay_pb2.CopyAnswer:
        async with self.db.read() as conn:
            head = await repo.household_head(conn, applicant.household_id)
            row = await repo.household_row(conn, applicant.household_id)
        return relay_pb2.CopyAnswer(
            entries=[
                copy_entry(
                    r,
                    relationship=request.include_relationship,
                    resident_code=request.include_resident_code,
                )
                for r in residents
            ],
            household_address=row[1] if row is not None else applicant.person.address,
            head_name=head.person.name if head is not None else "",
            local_government_code=self.municipality,
            as_of=self.clock.now().astimezone(dt.UTC).isoformat(),
        )

    def _operation(
        self,
        request: relay_pb2.CopyRequest,
        codes: tuple[str, ...],
        relayed: Relayed | None,
        error: JukinetError | None,
    ) -> Operation:
        return Operation(
            time=self.clock.now(),
            operator=request.operator,
            terminal=request.terminal,
            operation=ANSWER_OPERATION,
            resident_codes=codes,
            outcome="ok" if error is None else "refused",
            reason="" if error is None else str(error.reason),
            relay=relayed,
        )

    async def _log(
        self,
        request: relay_pb2.CopyRequest,
        codes: tuple[str, ...],
        relayed: Relayed | None,
        error: JukinetError,
    ) -> None:
        """Log a refused copy request (a failure to do so is logged, the refusal stands)."""
        try:
            async with self.db.write() as conn:
                await self.oplog.append(conn, self._operation(request, codes, relayed, error))
        except Exception as exc:
            log.error("the refusal of a copy request could not be logged: %s", type(exc).__name__)

    # -- the residents' disclosure ------------------------------------------------------

    async def disclosed(self, resident: ResidentState) -> list[provision_pb2.CopyGiven]:
        """The copies answered here that show ``resident``'s entry, oldest first."""
        async with self.db.read() as conn:
            rows = await repo.copies_of(conn, resident.id)
        return [
            provision_pb2.CopyGiven(
                requested_at=as_utc(row.requested_at).isoformat(),
                issuing_local_government_code=row.issuing_local_government_code,
                operator=row.operator,
                terminal=row.terminal,
                applicant_code=row.applicant_code,
                relationship_shown=row.relationship_shown,
                code_shown=row.code_shown,
                resident_card=bool(row.card_id),
                request_id=row.request_id,
            )
            for row in rows
        ]
