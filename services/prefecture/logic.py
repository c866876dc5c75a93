"""Rules of a prefecture node that need no I/O."""

from __future__ import annotations

from jukinet.errors import PermissionDenied
from jukinet.identity import Identity
from jukinet.reasons import Reason
from jukinet.v1 import common_pb2


def authorize_municipal_origin(caller: Identity, n: common_pb2.Notification, prefix: str) -> None:
    """A municipality sends only its own notifications (its prefecture is checked
    by the method table before any of this runs)."""
    if n.origin_code != caller.code:
        raise PermissionDenied(
            f"{prefix}.origin_code: {caller.uri} may not send notifications of {n.origin_code}",
            reason=Reason.FOREIGN_ORIGIN,
        )


def authorize_pool_request(caller: Identity, municipality_code: str) -> None:
    """A municipality asks for codes for itself only."""
    if municipality_code != caller.code:
        raise PermissionDenied(
            f"municipality_code: {caller.uri} may not ask for codes of {municipality_code}",
            reason=Reason.FOREIGN_ORIGIN,
        )


def disclosure_for(caller: Identity, requested: str) -> str:
    """The municipality a relayed disclosure request is made for: the caller
    itself, from its certificate. A caller naming another one is refused; the
    national node then checks that municipality against the resident's record."""
    if requested and requested != caller.code:
        raise PermissionDenied(
            f"municipality_code: {caller.uri} may not ask for disclosures of {requested}",
            reason=Reason.FOREIGN_ORIGIN,
        )
    return caller.code
