"""A resident card (住民基本台帳カード) at a counter terminal: the card in the
terminal's reader and the node's ``ResidentCardService``, used together.

- :func:`issue_card`: the key pair is made on a blank card, the node certifies
  its public key with the municipality's resident card CA, and the card stores
  the certificate and takes the security officer PIN the node chose;
- :func:`prove_card`: the proof of identity at any counter: the node's
  challenge, signed on the card after its PIN (counted on the card);
  :func:`card_proof` is that signature alone (a ``CardProof``), for a request
  that carries it (``IssueCopy``, ``SpecialMoveIn``);
- :func:`sign_move_out`: at home, a move-out filed by post (付記転出届)
  signed by the card after its PIN (no node);
- :func:`special_move_in`: the move-in with the card and PIN (特例転入) at the
  new municipality, the card's certificate renewed there when it is continued;
- :func:`unlock_card`: at the issuing municipality, a new PIN set with the
  security officer PIN the node gives back;
- :func:`revoke_card`: a lost (stolen, returned) card revoked; every node
  refuses it once the CRL reached it.

What the `jukinet card` commands and the demo do at a counter. The card's own
operations block (PKCS#11) and run on a worker thread; the node's calls run on
the caller's event loop. ``lib`` is the PKCS#11 module (default:
:func:`jukinet.card.load_module`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jukinet import card as cards
from jukinet.residentcard import sign_filing
from jukinet.v1 import card_pb2, municipal_pb2

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Module

    from jukinet.v1.card_pb2_grpc import ResidentCardServiceAsyncStub as Stub
    from jukinet.v1.municipal_pb2_grpc import MunicipalServiceAsyncStub


@dataclass(frozen=True)
class IssuedCard:
    """A resident card the node issued: its id and the certificate now on the card."""

    card_id: str
    certificate: x509.Certificate


async def issue_card(
    stub: Stub,
    resident_code: str,
    *,
    pin: str,
    so_pin: str,
    label: str | None = None,
    lib: Module | None = None,
    call_timeout: float | None = None,
) -> IssuedCard:
    """Issue the blank card ``label`` (initialised with the resident's 4-digit ``pin`` and
    the card maker's ``so_pin``) to ``resident_code``."""
    loop = asyncio.get_running_loop()
    issued: list[card_pb2.IssueCardResponse] = []

    async def ask(public_key: bytes) -> card_pb2.IssueCardResponse:
        answer: card_pb2.IssueCardResponse = await stub.IssueCard(
            card_pb2.IssueCardRequest(resident_code=resident_code, public_key=public_key),
            timeout=call_timeout,
        )
        issued.append(answer)
        return answer

    def certify(key: ec.EllipticCurvePublicKey) -> tuple[x509.Certificate, str]:
        der = key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        answer = asyncio.run_coroutine_threadsafe(ask(der), loop).result()
        return x509.load_der_x509_certificate(answer.certificate), answer.security_officer_pin

    def provision() -> x509.Certificate:
        return cards.provision_resident_card(
            lib or cards.load_module(), pin, so_pin, certify, label=label
        )

    certificate = await asyncio.to_thread(provision)
    return IssuedCard(issued[0].card_id, certificate)


async def card_proof(
    stub: Stub,
    *,
    pin: str,
    label: str | None = None,
    lib: Module | None = None,
    call_timeout: float | None = None,
) -> municipal_pb2.CardProof:
    """A new challenge of the counter ``stub`` reaches, signed on the card after ``pin``;
    the card refuses a wrong PIN (:class:`~jukinet.card.WrongPin`,
    :class:`~jukinet.card.CardLocked`)."""
    begun = await stub.BeginCardProof(card_pb2.BeginCardProofRequest(), timeout=call_timeout)

    def sign() -> municipal_pb2.CardProof:
        with cards.open_resident_card(lib or cards.load_module(), pin, label=label) as card:
            return municipal_pb2.CardProof(
                nonce=begun.nonce,
                card_certificate=card.certificate.public_bytes(serialization.Encoding.DER),
                signature=card.sign(begun.challenge),
            )

    return await asyncio.to_thread(sign)


async def prove_card(
    stub: Stub,
    *,
    pin: str,
    label: str | None = None,
    lib: Module | None = None,
    call_timeout: float | None = None,
) -> card_pb2.ProveCardResponse:
    """The card's proof of identity at the counter ``stub`` reaches; the card refuses a
    wrong PIN, the node a revoked, lapsed or unknown card."""
    proof = await card_proof(stub, pin=pin, label=label, lib=lib, call_timeout=call_timeout)
    answer: card_pb2.ProveCardResponse = await stub.ProveCard(
        card_pb2.ProveCardRequest(
            nonce=proof.nonce, card_certificate=proof.card_certificate, signature=proof.signature
        ),
        timeout=call_timeout,
    )
    return answer


def sign_move_out(
    *,
    pin: str,
    destination: str,
    planned: str,
    new_address: str,
    signed_on: str,
    abroad: bool = False,
    label: str | None = None,
    lib: Module | None = None,
) -> municipal_pb2.SignedMoveOutFiling:
    """A move-out filed by post (付記転出届) to ``destination`` (a local government code;
    empty with ``abroad``) on ``planned``, signed by the card after ``pin``. Blocks (the
    card's PKCS#11 calls)."""
    with cards.open_resident_card(lib or cards.load_module(), pin, label=label) as card:
        return sign_filing(
            card.sign,
            card.certificate.public_bytes(serialization.Encoding.DER),
            destination=destination,
            planned=planned,
            new_address=new_address,
            signed_on=signed_on,
            abroad=abroad,
        )


async def special_move_in(
    municipal: MunicipalServiceAsyncStub,
    stub: Stub,
    request: municipal_pb2.SpecialMoveInRequest,
    *,
    pin: str,
    label: str | None = None,
    lib: Module | None = None,
    call_timeout: float | None = None,
) -> municipal_pb2.SpecialMoveInResponse:
    """Register the move-in ``request`` (without its proof) with the card and ``pin`` at
    the new municipality; with ``continue_card``, the certificate the node gives back is
    stored on the card."""
    proof = await card_proof(stub, pin=pin, label=label, lib=lib, call_timeout=call_timeout)
    sent = municipal_pb2.SpecialMoveInRequest()
    sent.CopyFrom(request)
    sent.card_proof.CopyFrom(proof)
    answer: municipal_pb2.SpecialMoveInResponse = await municipal.SpecialMoveIn(
        sent, timeout=call_timeout
    )
    if answer.card_certificate:
        await asyncio.to_thread(
            cards.store_continued_certificate,
            lib or cards.load_module(),
            pin,
            x509.load_der_x509_certificate(answer.card_certificate),
            label=label,
        )
    return answer


async def unlock_card(
    stub: Stub,
    card_id: str,
    new_pin: str,
    *,
    label: str | None = None,
    lib: Module | None = None,
    call_timeout: float | None = None,
) -> None:
    """Unlock card ``card_id`` with ``new_pin`` (four digits, checked before the node is
    asked) and the security officer PIN the issuing node gives back."""
    cards.check_resident_pin(new_pin)
    answer = await stub.UnlockCard(
        card_pb2.UnlockCardRequest(card_id=card_id), timeout=call_timeout
    )
    await asyncio.to_thread(
        cards.unlock_resident_card,
        lib or cards.load_module(),
        answer.security_officer_pin,
        new_pin,
        label=label,
    )


async def revoke_card(
    stub: Stub,
    resident_code: str,
    reason: card_pb2.CardRevocationReason.ValueType,
    *,
    call_timeout: float | None = None,
) -> card_pb2.RevokeCardResponse:
    """Revoke the valid card of ``resident_code`` at its home municipality."""
    answer: card_pb2.RevokeCardResponse = await stub.RevokeCard(
        card_pb2.RevokeCardRequest(resident_code=resident_code, reason=reason), timeout=call_timeout
    )
    return answer


__all__ = [
    "IssuedCard",
    "card_proof",
    "issue_card",
    "prove_card",
    "revoke_card",
    "sign_move_out",
    "special_move_in",
    "unlock_card",
]
