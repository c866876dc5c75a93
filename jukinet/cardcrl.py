"""Resident card CRLs between the tiers: a prefecture and the national node keep the
newest CRL of every municipality's card CA and pass them on.

A municipality publishes its own CRL to its prefecture (at once after a
revocation, and at every exchange) and fetches the ones it lacks; the
prefecture passes a new CRL of its municipalities up to the national node at
once, and fetches from it the other prefectures'. Each CRL travels with its
CA's certificate and is checked at every hop against the federation root
(:meth:`jukinet.residentcard.CardTrust.accept`), so no hop can forge or roll
one back; and each caller publishes only its own (a municipality its CRL, a
prefecture its municipalities'), so none speaks for another.

The upper tiers keep what they hold in memory: it is soft state, rebuilt
after a restart within one exchange interval from the tiers above and below,
which republish what they hold at every exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from jukinet.errors import PermissionDenied
from jukinet.identity import Identity
from jukinet.interceptors import current_identity
from jukinet.reasons import Reason
from jukinet.residentcard import CardCrl, CardTrust, read_card_crl
from jukinet.v1 import card_pb2, card_pb2_grpc

log = logging.getLogger(__name__)

MayPublish = Callable[[Identity, str], bool]
"""Whether a caller may publish the CRL of a municipality's card CA."""


def _messages(crls: Iterable[CardCrl]) -> list[card_pb2.CardCrl]:
    return [card_pb2.CardCrl(ca_certificate=c.ca_certificate, crl=c.crl) for c in crls]


def _carried(messages: Iterable[card_pb2.CardCrl]) -> list[CardCrl]:
    return [CardCrl(m.ca_certificate, m.crl) for m in messages]


class CardCrlRelay:
    """One upper tier's store of card CRLs, and its exchange with the tier above.

    ``up`` is the tier above's (PublishCardCrls, ListCardCrls) methods, None
    at the top; ``own`` says which municipalities' CRLs this node passes up.
    """

    def __init__(
        self,
        trust: CardTrust,
        may_publish: MayPublish,
        *,
        up: tuple[Callable[..., Awaitable[Any]], Callable[..., Awaitable[Any]]] | None = None,
        own: Callable[[str], bool] = lambda code: False,
        interval: float = 30.0,
        timeout: float = 10.0,
    ) -> None:
        self.trust = trust
        self.may_publish = may_publish
        self.up = up
        self.own = own
        self.interval = interval
        self.timeout = timeout
        self._wake = asyncio.Event()

    async def publish(
        self, request: card_pb2.PublishCardCrlsRequest
    ) -> card_pb2.PublishCardCrlsResponse:
        """Take the caller's CRLs that are new here (each checked; a foreign one refused)."""
        caller = current_identity()
        checked = []
        for i, message in enumerate(request.crls):
            carried = CardCrl(message.ca_certificate, message.crl)
            try:
                authority = read_card_crl(carried, self.trust.root)
            except ValueError as exc:
                raise PermissionDenied(f"crls[{i}]: {exc}", reason=Reason.CARD_INVALID) from None
            if not self.may_publish(caller, authority.municipality):
                raise PermissionDenied(
                    f"crls[{i}]: {caller.uri} does not publish the CRL of {authority.municipality}",
                    reason=Reason.FOREIGN_ORIGIN,
                )
            checked.append(carried)
        accepted = self.trust.accept_all(checked)
        if accepted:
            self._wake.set()
        return card_pb2.PublishCardCrlsResponse(accepted=accepted)

    async def list(self, request: card_pb2.ListCardCrlsRequest) -> card_pb2.ListCardCrlsResponse:
        """Every CRL held that is newer than the caller's."""
        return card_pb2.ListCardCrlsResponse(crls=_messages(self.trust.newer_than(request.known)))

    async def round(self) -> int:
        """One exchange with the tier above: pass up this node's municipalities' CRLs,
        fetch the ones it lacks; how many were taken."""
        if self.up is None:
            return 0
        publish, fetch = self.up
        mine = self.trust.newer_than({}, [c for c in self.trust.authorities if self.own(c)])
        if mine:
            await publish(
                card_pb2.PublishCardCrlsRequest(crls=_messages(mine)), timeout=self.timeout
            )
        answer = await fetch(
            card_pb2.ListCardCrlsRequest(known=self.trust.known()), timeout=self.timeout
        )
        return self.trust.accept_all(_carried(answer.crls))

    async def run(self) -> None:
        """Exchange with the tier above until cancelled: at once after a new CRL came
        in, and every ``interval`` seconds."""
        while self.up is not None:
            self._wake.clear()
            try:
                await self.round()
            except Exception as exc:  # the tier above may be down: next round
                log.warning("card CRL exchange with the tier above failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)


class PrefectureCardCrls(card_pb2_grpc.CardRevocationServiceServicer):
    """CardRevocationService at a prefecture."""

    def __init__(self, relay: CardCrlRelay) -> None:
        self._relay = relay

    async def PublishCardCrls(
        self, request: card_pb2.PublishCardCrlsRequest, context: Any
    ) -> card_pb2.PublishCardCrlsResponse:
        """A municipality of this prefecture publishes its CRL."""
        return await self._relay.publish(request)

    async def ListCardCrls(
        self, request: card_pb2.ListCardCrlsRequest, context: Any
    ) -> card_pb2.ListCardCrlsResponse:
        """The CRLs a municipality of this prefecture lacks."""
        return await self._relay.list(request)


class NationalCardCrls(card_pb2_grpc.NationalCardRevocationServiceServicer):
    """NationalCardRevocationService at the national node."""

    def __init__(self, relay: CardCrlRelay) -> None:
        self._relay = relay

    async def PublishCardCrls(
        self, request: card_pb2.PublishCardCrlsRequest, context: Any
    ) -> card_pb2.PublishCardCrlsResponse:
        """A prefecture publishes its municipalities' CRLs."""
        return await self._relay.publish(request)

    async def ListCardCrls(
        self, request: card_pb2.ListCardCrlsRequest, context: Any
    ) -> card_pb2.ListCardCrlsResponse:
        """The CRLs a prefecture lacks."""
        return await self._relay.list(request)
