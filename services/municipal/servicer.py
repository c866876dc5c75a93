"""gRPC surface of a municipal node: each RPC hands its request to the
register's use cases (:mod:`services.municipal.service`) and maps the answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from typing import Any

from jukinet.client import STREAM_READY
from jukinet.errors import PermissionDenied
from jukinet.identity import Identity
from jukinet.interceptors import current_terminal
from jukinet.reasons import Reason
from jukinet.v1 import card_pb2, card_pb2_grpc, municipal_pb2_grpc, provision_pb2
from jukinet.v1 import municipal_pb2 as pb
from services.municipal.cards import ResidentCards
from services.municipal.copies import Copies
from services.municipal.service import MunicipalService


class MunicipalServicer(municipal_pb2_grpc.MunicipalServiceServicer):
    """The MunicipalService RPCs."""

    def __init__(self, service: MunicipalService, copies: Copies) -> None:
        self._r = service
        self._lg = service.municipality
        self._copies = copies

    async def RegisterBirth(
        self, request: pb.RegisterBirthRequest, context: Any
    ) -> pb.RegisterBirthResponse:
        """Register a birth (出生) with a code from the pool; its operators only."""
        resident, seq = await self._r.register_birth(request)
        return pb.RegisterBirthResponse(
            resident=resident.to_proto(self._lg), notification_sequence=seq
        )

    async def MoveIn(self, request: pb.MoveInRequest, context: Any) -> pb.MoveInResponse:
        """Register a move-in (転入, 特例転入, from abroad); its operators only."""
        resident, seq = await self._r.move_in(request)
        return pb.MoveInResponse(resident=resident.to_proto(self._lg), notification_sequence=seq)

    async def Relocate(self, request: pb.RelocateRequest, context: Any) -> pb.RelocateResponse:
        """Move a resident or their household to a new address here (転居); its operators only."""
        residents, seq = await self._r.relocate(request)
        return pb.RelocateResponse(
            residents=[r.to_proto(self._lg) for r in residents], last_notification_sequence=seq
        )

    async def ChangeName(
        self, request: pb.ChangeNameRequest, context: Any
    ) -> pb.ChangeNameResponse:
        """Change a resident's name, reading or former surname; its operators only."""
        resident, seq = await self._r.change_name(request)
        return pb.ChangeNameResponse(
            resident=resident.to_proto(self._lg), notification_sequence=seq
        )

    async def MoveOut(self, request: pb.MoveOutRequest, context: Any) -> pb.MoveOutResponse:
        """Remove a resident who moves out (転出, certificate issued) or abroad; its operators."""
        resident, seq, certificate = await self._r.move_out(request)
        return pb.MoveOutResponse(
            resident=resident.to_proto(self._lg),
            notification_sequence=seq,
            certificate=certificate,
        )

    async def ReissueMoveOutCertificate(
        self, request: pb.ReissueMoveOutCertificateRequest, context: Any
    ) -> pb.ReissueMoveOutCertificateResponse:
        """The latest move-out certificate of a resident who moved to another
        municipality, signed again with the node's current key; its operators only."""
        certificate = await self._r.reissue_certificate(request.resident_code)
        return pb.ReissueMoveOutCertificateResponse(certificate=certificate)

    async def RecordDeath(
        self, request: pb.RecordDeathRequest, context: Any
    ) -> pb.RecordDeathResponse:
        """Remove a resident who died (死亡); its operators only."""
        resident, seq = await self._r.record_death(request)
        return pb.RecordDeathResponse(
            resident=resident.to_proto(self._lg), notification_sequence=seq
        )

    async def ChangeResidentCode(
        self, request: pb.ChangeResidentCodeRequest, context: Any
    ) -> pb.ChangeResidentCodeResponse:
        """Give a resident a new code from the pool (住民票コード変更); its operators only."""
        resident, previous, seq = await self._r.change_code(request)
        return pb.ChangeResidentCodeResponse(
            resident=resident.to_proto(self._lg),
            previous_resident_code=previous,
            notification_sequence=seq,
        )

    async def EnterExOfficio(
        self, request: pb.EnterExOfficioRequest, context: Any
    ) -> pb.EnterExOfficioResponse:
        """Enter a person ex officio (職権記載) with a code from the pool; its operators only."""
        resident, seq = await self._r.enter_ex_officio(request)
        return pb.EnterExOfficioResponse(
            resident=resident.to_proto(self._lg), notification_sequence=seq
        )

    async def Amend(self, request: pb.AmendRequest, context: Any) -> pb.AmendResponse:
        """Correct a resident's details ex officio (職権修正); its operators only."""
        resident, seq = await self._r.amend(request)
        return pb.AmendResponse(resident=resident.to_proto(self._lg), notification_sequence=seq)

    async def RemoveExOfficio(
        self, request: pb.RemoveExOfficioRequest, context: Any
    ) -> pb.RemoveExOfficioResponse:
        """Remove a resident ex officio (職権消除) or declared missing; its operators only."""
        resident, seq = await self._r.remove_ex_officio(request)
        return pb.RemoveExOfficioResponse(
            resident=resident.to_proto(self._lg), notification_sequence=seq
        )

    async def GetResident(
        self, request: pb.GetResidentRequest, context: Any
    ) -> pb.GetResidentResponse:
        """One resident and every notification about them; its operators only."""
        resident, notifications, events = await self._r.get(request.resident_code)
        return pb.GetResidentResponse(
            resident=resident.to_proto(self._lg), notifications=notifications, events=events
        )

    async def GetHousehold(
        self, request: pb.GetHouseholdRequest, context: Any
    ) -> pb.GetHouseholdResponse:
        """A household with its head and members' relationships; its operators only."""
        return pb.GetHouseholdResponse(household=await self._r.household(request))

    async def ChangeHousehold(
        self, request: pb.ChangeHouseholdRequest, context: Any
    ) -> pb.ChangeHouseholdResponse:
        """Move a resident between households, or change the head or a
        relationship (世帯変更), with the move (転居) it may make; its operators only."""
        household, residents, seq = await self._r.change_household(request)
        return pb.ChangeHouseholdResponse(
            household=household,
            residents=[r.to_proto(self._lg) for r in residents],
            notification_sequence=seq,
        )

    async def ChangeDomicile(
        self, request: pb.ChangeDomicileRequest, context: Any
    ) -> pb.ChangeDomicileResponse:
        """Change a resident's domicile (本籍) and its head; nothing goes upward;
        its operators only."""
        resident = await self._r.change_domicile(request)
        return pb.ChangeDomicileResponse(resident=resident.to_proto(self._lg))

    async def ExportResidents(
        self, request: pb.ExportResidentsRequest, context: Any
    ) -> AsyncIterator[pb.ExportResidentsResponse]:
        """Every resident, active or removed, page by page; its operators only."""
        async for residents in self._r.export(request.page_size):
            yield pb.ExportResidentsResponse(residents=[r.to_proto(self._lg) for r in residents])

    async def ImportResidents(
        self, request_iterator: AsyncIterator[pb.ImportResidentsRequest], context: Any
    ) -> AsyncIterator[pb.ImportResidentsResponse]:
        """Load an existing register, one transaction and answer per batch; its operators only.

        The stream opens with the headers :data:`IMPORT_READY` before any row is
        read: a client writes only once they arrived, so a refusal of the whole
        stream (sent in their place) reaches it as its status rather than as a
        failed write.
        """
        await context.send_initial_metadata((STREAM_READY,))
        async for request in request_iterator:
            yield await self._r.import_rows(request.rows)

    async def DiscloseProvisions(
        self, request: provision_pb2.DiscloseRequest, context: Any
    ) -> provision_pb2.DiscloseResponse:
        """For a resident at the counter: the national record and who received it; its
        operators only, for a resident of its register."""
        return await self._r.disclose(request)

    async def GetStatus(
        self, request: pb.GetMunicipalStatusRequest, context: Any
    ) -> pb.GetMunicipalStatusResponse:
        """The register's delivery and pool status and its resident counts; its operators only."""
        status = await self._r.status()
        return pb.GetMunicipalStatusResponse(
            local_government_code=self._lg,
            last_sequence=status.last_sequence,
            acknowledged_through=status.acknowledged_through,
            codes_in_pool=status.codes_in_pool,
            active_residents=status.active_residents,
            removed_residents=status.removed_residents,
        )

    async def ListUnconfirmedMoveOuts(
        self, request: pb.ListUnconfirmedMoveOutsRequest, context: Any
    ) -> pb.ListUnconfirmedMoveOutsResponse:
        """Move-outs without the new municipality's move-in notice past the statutory
        period; its operators only (clerk, supervisor)."""
        found = await self._r.unconfirmed_move_outs(request.as_of)
        return pb.ListUnconfirmedMoveOutsResponse(move_outs=found)

    async def MoveOutByPost(
        self, request: pb.MoveOutByPostRequest, context: Any
    ) -> pb.MoveOutByPostResponse:
        """A move-out filed by post with the resident card's signature (付記転出届); its
        operators only, for a card of this municipality its resident holds."""
        resident, seq, number = await self._r.move_out_by_post(request)
        return pb.MoveOutByPostResponse(
            resident=resident.to_proto(self._lg),
            notification_sequence=seq,
            certificate_number=number,
        )

    async def SpecialMoveIn(
        self, request: pb.SpecialMoveInRequest, context: Any
    ) -> pb.SpecialMoveInResponse:
        """A move-in with the resident card and its PIN after a move-out by post (特例転入);
        its operators only, at a counter terminal."""
        resident, seq, number, card_id, certificate = await self._r.special_move_in(
            request, _terminal()
        )
        return pb.SpecialMoveInResponse(
            resident=resident.to_proto(self._lg),
            notification_sequence=seq,
            certificate_number=number,
            card_id=card_id,
            card_certificate=certificate,
        )

    async def IssueCopy(self, request: pb.IssueCopyRequest, context: Any) -> pb.IssueCopyResponse:
        """A copy of a resident record (広域交付) from the applicant's home municipality,
        signed here; its operators only (clerk, supervisor)."""
        return await self._copies.issue(request)


def _terminal() -> Identity:
    terminal = current_terminal()
    if terminal is None:
        raise PermissionDenied("only a counter terminal calls this", reason=Reason.WRONG_IDENTITY)
    return terminal


class ResidentCardServicer(card_pb2_grpc.ResidentCardServiceServicer):
    """The ResidentCardService RPCs: the counter's resident cards."""

    def __init__(self, cards: ResidentCards) -> None:
        self._c = cards

    async def IssueCard(
        self, request: card_pb2.IssueCardRequest, context: Any
    ) -> card_pb2.IssueCardResponse:
        """Certify a key made on a blank card for a resident here; its operators only."""
        card_id, certificate, so_pin = await self._c.issue(
            request.resident_code, request.public_key
        )
        return card_pb2.IssueCardResponse(
            card_id=card_id, certificate=certificate, security_officer_pin=so_pin
        )

    async def BeginCardProof(
        self, request: card_pb2.BeginCardProofRequest, context: Any
    ) -> card_pb2.BeginCardProofResponse:
        """A proof-of-identity challenge bound to the calling terminal."""
        challenge = await self._c.begin_proof(_terminal())
        return card_pb2.BeginCardProofResponse(
            challenge=challenge.message(),
            nonce=challenge.nonce,
            expires_at=challenge.expires_at.astimezone(dt.UTC).isoformat(),
        )

    async def ProveCard(
        self, request: card_pb2.ProveCardRequest, context: Any
    ) -> card_pb2.ProveCardResponse:
        """Check a card's signed challenge: any municipality's card."""
        holder, resident_code = await self._c.prove(
            _terminal(), request.nonce, request.card_certificate, request.signature
        )
        return card_pb2.ProveCardResponse(
            card_id=holder.card_id,
            issuing_local_government_code=holder.municipality,
            resident_code=resident_code,
        )

    async def UnlockCard(
        self, request: card_pb2.UnlockCardRequest, context: Any
    ) -> card_pb2.UnlockCardResponse:
        """The security officer PIN of a card of this node's record; supervisors only."""
        return card_pb2.UnlockCardResponse(
            security_officer_pin=await self._c.unlock(request.card_id)
        )

    async def RevokeCard(
        self, request: card_pb2.RevokeCardRequest, context: Any
    ) -> card_pb2.RevokeCardResponse:
        """Revoke a resident's card; the CRL is re-signed and published."""
        card_id, serial, number = await self._c.revoke(request.resident_code, request.reason)
        return card_pb2.RevokeCardResponse(card_id=card_id, serial=f"{serial:x}", crl_number=number)

    async def ContinueCard(
        self, request: card_pb2.ContinueCardRequest, context: Any
    ) -> card_pb2.ContinueCardResponse:
        """Continue the card of a resident who moved in here."""
        card_id, certificate = await self._c.continue_card(
            request.resident_code, request.card_certificate
        )
        return card_pb2.ContinueCardResponse(card_id=card_id, certificate=certificate)
