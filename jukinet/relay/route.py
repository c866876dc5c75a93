"""Which caller may hand an envelope to which node, and where it goes next: the
hop checks of each tier. Pure rules ("two questions, always both": the method
table admits the kind of caller, these rules the caller for this envelope)."""

from __future__ import annotations

from jukinet.errors import PermissionDenied
from jukinet.identity import Identity, Kind
from jukinet.reasons import Reason
from jukinet.relay.header import Header


class WrongHop(PermissionDenied):
    """The caller may not hand this envelope to this node."""

    reason = Reason.RELAY_WRONG_HOP


def prefecture_next(prefecture: str, caller: Identity, header: Header) -> Identity:
    """Where prefecture ``prefecture`` passes an envelope ``caller`` handed it.

    From one of its municipalities only as the header's source: to the
    destination's node when it is one of its own, else to the national node.
    From the national node only for one of its own municipalities.
    """
    destination = Identity.municipality(header.destination)
    if caller.kind is Kind.MUNICIPALITY and caller.prefecture_code == prefecture:
        if caller.code != header.source:
            raise WrongHop(
                f"{caller.uri} relays its own requests only, not those of {header.source}"
            )
        if header.destination[:2] == prefecture:
            return destination
        return Identity.national()
    if caller.kind is Kind.NATIONAL:
        if header.destination[:2] != prefecture:
            raise WrongHop(
                f"the national node hands prefecture {prefecture} requests for its own "
                f"municipalities only, not for {header.destination}"
            )
        if header.source[:2] == prefecture:
            raise WrongHop("a request within one prefecture does not pass the national node")
        return destination
    raise WrongHop(f"{caller.uri} may not hand requests to prefecture {prefecture}")


def national_next(caller: Identity, header: Header) -> Identity:
    """Where the national node passes an envelope: from the source's prefecture only,
    to the destination's prefecture, when that is another one."""
    if caller.kind is not Kind.PREFECTURE or caller.code != header.source[:2]:
        raise WrongHop(f"{caller.uri} is not the prefecture of {header.source}")
    if header.destination[:2] == header.source[:2]:
        raise WrongHop("a request within one prefecture does not pass the national node")
    return Identity.prefecture(header.destination[:2])


def municipal_accept(municipality: str, caller: Identity, header: Header) -> None:
    """Whether municipality ``municipality`` takes an envelope from ``caller``: from its
    own prefecture only, addressed to itself."""
    if caller != Identity.prefecture(municipality[:2]):
        raise WrongHop(f"{caller.uri} is not the prefecture of {municipality}")
    if header.destination != municipality:
        raise WrongHop(f"the request is for {header.destination}, not for {municipality}")
