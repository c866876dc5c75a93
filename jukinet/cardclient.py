"""A resident card (住民基本台帳カード) at a counter terminal: the card in the
terminal's reader and the node's ``ResidentCardService``, used together.

- :func:`issue_card`: the key pair is made on a blank card, the node certifies
  its public key with the municipality's resident card CA, and the card stores
  the certificate and takes the security officer PIN the node chose;
- :func:`prove_card`: the proof of identity at any counter: the node's
  challenge, signed on the card after its PIN (counted on the card);
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
from jukinet.v1 import card_pb2

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Module

    from jukinet.v1.card_pb2_grpc import ResidentCardServiceAsyncStub as Stub


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


async def prove_card(
    stub: Stub,
    *,
    pin: str,
    label: str | None = None,
    lib: Module | None = None,
    call_timeout: float | None = None,
) -> card_pb2.ProveCardResponse:
    """The card's proof of identity at the counter ``stub`` reaches; the card refuses a
    wrong PIN (:class:`~jukinet.card.WrongPin`, :class:`~jukinet.card.CardLocked`),
    the node a revoked, lapsed or unknown card."""
    begun = await stub.BeginCardProof(card_pb2.BeginCardProofRequest(), timeout=call_timeout)

    def sign() -> tuple[bytes, bytes]:
        with cards.open_resident_card(lib or cards.load_module(), pin, label=label) as card:
            return card.sign(begun.challenge), card.certificate.public_bytes(
                serialization.Encoding.DER
            )

    signature, certificate = await asyncio.to_thread(sign)
    answer: card_pb2.ProveCardResponse = await stub.ProveCard(
        card_pb2.ProveCardRequest(
            nonce=begun.nonce, card_certificate=certificate, signature=signature
        ),
        timeout=call_timeout,
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


__all__ = ["IssuedCard", "issue_card", "prove_card", "revoke_card", "unlock_card"]
