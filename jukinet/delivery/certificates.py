"""How an upper tier (prefecture or national) checks the move-out certificate
(転出証明書) that a domestic move-in carries, before anything of its batch is
stored. Pure rules and cryptography, no I/O.

Two kinds of check:

* self-contained (:func:`certificate_of`): the certificate is there, signed by
  the issuing municipality's node under the federation's CA and not revoked,
  for the record's code, from another municipality than the origin, to the
  origin if it names a destination, with the record's identity items; and
  (:func:`screen_batch`) it was not used before at this tier by another
  notification (its number, or its issuer's move-out sequence);
* the holding (:func:`judge_holding`): the issuer held the resident at this
  tier's knowledge, by its own earlier registration or the record being
  there. The issuer's own notifications may lag behind the move-in; whether a
  missing holding is a forgery depends on how far the issuer's stream has come
  here, and, at the prefecture, on whether the issuer is one of its own
  municipalities at all.

A prefecture refuses what fails (a lagging issuer retryably). The national
node must not refuse what its prefecture accepted for reasons the prefecture
could not know (it would stall that prefecture's relay, every municipality
behind it): a forgery it alone can see (an issuer from another prefecture that
never held the resident, a certificate used in another prefecture first) is
acknowledged and kept in the history as refused, never applied. What such a
registration would register counts as refused too, so the sender's later
changes of that resident follow it instead of stalling the relay.

A move-in whose issuer's stream has not come as far as the move-out is applied
at either tier, in the order of cause (rules.py): no stream waits for another.
Its certificate is checked after the fact instead (:func:`contradictions`):
when the issuer's notification at the named sequence arrives, it must be that
resident's move-out. One that is not is an issuer that signed a move-out it
did not notify; it is applied (it is the issuer's own stream) and reported.
Only the issuer, who held the resident, can sign such a certificate: the
register it contradicts is its own.
"""

from __future__ import annotations

import datetime as dt
import enum
import re
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from jukinet import movecert
from jukinet.codes import prefecture_of
from jukinet.delivery.rules import Holding, StoredIdentity, acted_on, check_held, registers
from jukinet.errors import InvalidArgument, PermissionDenied
from jukinet.movecert import CertificateMissing, CertificateRefused
from jukinet.reasons import Reason
from jukinet.tls import TlsFiles, revocation_source
from jukinet.v1 import common_pb2
from jukinet.vocabulary import Person, person_values

DOMESTIC_MOVE_IN = frozenset(
    {common_pb2.CHANGE_REASON_MOVE_IN, common_pb2.CHANGE_REASON_SPECIAL_MOVE_IN}
)
"""The reasons of a move-in from another municipality, which rests on a certificate."""

_NUMBER = re.compile(r"^[0-9]{6}-[0-9A-Za-z]{1,40}$")


@dataclass(frozen=True)
class MoveInPolicy:
    """What a receiver checks move-out certificates with: the federation's CA,
    the revoked serials the node loads (a set, or a callable giving the current
    one), and the tier: a prefecture's code, or empty at the national node."""

    ca: x509.Certificate
    revoked: Callable[[], frozenset[int]] | frozenset[int]
    prefecture: str = ""

    @classmethod
    def from_tls(cls, files: TlsFiles, prefecture: str = "") -> MoveInPolicy:
        """The policy of a node with these TLS files: their CA, their CRL."""
        ca = x509.load_pem_x509_certificate(files.load(usage="server").ca)
        return cls(ca=ca, revoked=revocation_source(files), prefecture=prefecture)


def is_domestic_move_in(n: common_pb2.Notification) -> bool:
    """Whether ``n`` is a move-in from another municipality."""
    return n.reason in DOMESTIC_MOVE_IN


def _refused(reason: Reason, where: str, message: str) -> CertificateRefused:
    return CertificateRefused(reason, f"{where}: {message}")


def certificate_of(
    n: common_pb2.Notification,
    policy: MoveInPolicy | None,
    prefix: str,
    now: dt.datetime | None = None,
) -> common_pb2.MoveOutCertificate | None:
    """The verified certificate of a domestic move-in (None for any other
    notification, which must carry none); refuses one that is missing, does not
    verify, or does not fit the notification. Without a policy (a receiver that
    has no trust anchor) every domestic move-in is refused."""
    where = f"{prefix}.move_out_certificate"
    if not is_domestic_move_in(n):
        if n.HasField("move_out_certificate"):
            raise InvalidArgument(where, "only a domestic move-in carries a move-out certificate")
        return None
    if not n.HasField("move_out_certificate"):
        raise CertificateMissing(where)
    if policy is None:
        raise _refused(
            Reason.MOVE_OUT_CERTIFICATE_INVALID, where, "this node cannot verify certificates"
        )
    try:
        verified = movecert.verify(
            n.move_out_certificate, ca=policy.ca, revoked=policy.revoked, now=now
        )
    except CertificateMissing:
        raise CertificateMissing(where) from None
    except CertificateRefused as exc:
        raise _refused(exc.reason, where, exc.message) from None
    cert = verified.certificate
    if not _NUMBER.match(cert.certificate_number):
        raise _refused(Reason.MOVE_OUT_CERTIFICATE_INVALID, where, "malformed certificate number")
    if cert.move_out_sequence < 1:
        raise _refused(Reason.MOVE_OUT_CERTIFICATE_INVALID, where, "names no move-out sequence")
    # The notification names no previous municipality: the issuer is it.
    issuer = cert.issuing_local_government_code
    if issuer == n.origin_code:
        raise _refused(
            Reason.MOVE_OUT_CERTIFICATE_MISMATCH, where, "issued by the moving-in municipality"
        )
    try:
        movecert.check_fits(
            cert,
            resident_code=n.record.resident_code,
            previous=issuer,
            destination=n.origin_code,
            person=Person(**person_values(n.record)),
        )
    except CertificateRefused as exc:
        raise _refused(exc.reason, where, exc.message) from None
    return cert


@dataclass(frozen=True)
class UsedCertificate:
    """A certificate as a tier records it used, by the notification that used it."""

    certificate_number: str
    issuer: str
    move_out_sequence: int
    resident_code: str
    origin_code: str
    origin_sequence: int

    @classmethod
    def of(cls, cert: common_pb2.MoveOutCertificate, n: common_pb2.Notification) -> UsedCertificate:
        """``cert`` as used by ``n``."""
        return cls(
            certificate_number=cert.certificate_number,
            issuer=cert.issuing_local_government_code,
            move_out_sequence=cert.move_out_sequence,
            resident_code=cert.resident_code,
            origin_code=n.origin_code,
            origin_sequence=n.sequence,
        )


@dataclass(frozen=True)
class Used:
    """The certificates used before at a tier: their numbers and (issuer, move-out
    sequence) pairs (those that the store found for a batch's certificates)."""

    numbers: frozenset[str] = frozenset()
    move_outs: frozenset[tuple[str, int]] = frozenset()


class Verdict(enum.Enum):
    """What a tier does with a notification it screened."""

    APPLY = "apply"
    QUARANTINE = "quarantine"  # the national node: kept as refused, never applied


def judge_holding(
    cert: common_pb2.MoveOutCertificate,
    *,
    current: StoredIdentity | None,
    registered: Collection[Holding],
    issuer_cursor: int,
    prefecture: str,
    prefix: str,
    quarantined: Collection[Holding] = (),
) -> Verdict:
    """Whether the issuer held the resident at this tier's knowledge: APPLY when
    it did or its stream is behind (checked after the fact); at the national
    node QUARANTINE for a definitive forgery; a prefecture refuses a definitive
    forgery by one of its own municipalities and lets the rest through.

    ``registered``: the holdings known (history and batch so far); ``current``:
    the stored record; ``issuer_cursor``: how far the issuer's stream has come
    here; ``prefecture``: this prefecture's code, empty at the national node;
    ``quarantined``: holdings that notifications kept refused would register
    (the issuer's own move-in may be one).
    A prefecture cannot know the holdings of another prefecture's municipality,
    nor yet those of its own whose stream is behind: it lets such a certificate
    through to the national node.
    """
    code, issuer = cert.resident_code, cert.issuing_local_government_code
    where = f"{prefix}.move_out_certificate"
    if current is not None and current.local_government_code == issuer:
        return Verdict.APPLY
    if (code, issuer) in registered:
        return Verdict.APPLY
    not_held = _refused(
        Reason.MOVE_OUT_CERTIFICATE_NOT_HELD, where, f"{issuer} does not hold the resident"
    )
    if prefecture:
        # A prefecture never holds a stream up for another: an issuer of
        # another prefecture is left to the national node; one of its own whose
        # stream has not come as far as the move-out is checked after the fact
        # (two municipalities exchanging residents would otherwise wait for
        # each other for ever).
        if prefecture_of(issuer) != prefecture or issuer_cursor < cert.move_out_sequence:
            return Verdict.APPLY
        raise not_held
    if (code, issuer) in quarantined:
        return Verdict.QUARANTINE
    if issuer_cursor < cert.move_out_sequence:
        # The issuer's notifications are on their way by another prefecture:
        # applied now, in the order of cause (rules.py), as a prefecture does.
        return Verdict.APPLY
    return Verdict.QUARANTINE


@dataclass(frozen=True)
class Screened:
    """A batch screened for move-out certificates: the notifications (by index in
    the batch) quarantined with their reason, and the certificates to record
    used."""

    quarantined: dict[int, Reason] = field(default_factory=dict)
    used: tuple[UsedCertificate, ...] = ()


def screen_batch(
    fresh: Sequence[common_pb2.Notification],
    certificates: Mapping[int, common_pb2.MoveOutCertificate],
    *,
    records: Mapping[str, StoredIdentity],
    registered: Collection[Holding],
    quarantined_holdings: Collection[Holding],
    used: Used,
    cursors: Mapping[str, int],
    prefecture: str,
    certified: Mapping[tuple[str, int], common_pb2.Notification] | None = None,
) -> Screened:
    """Check, in order, that no certificate was used before and that each issuer
    held its resident; at the national node, sort out what is quarantined.

    ``certificates``: the verified certificates by index in ``fresh``;
    ``cursors``: the origins' cursors before the batch (issuers included);
    ``quarantined_holdings``: those of the batch's acted-on (code, origin)
    pairs that a notification kept refused registered; ``certified``: the
    stored notifications at the (issuer, move-out sequence) the certificates
    name, where this tier has them: each must be the move-out of the
    certificate's resident (a former holder cannot certify a move-out it never
    notified). A municipality's later changes of a resident it holds only by
    such a registration follow it. Refuses as the prefecture (or, for what the
    prefecture checked too, the national node) must.
    """
    national = not prefecture
    numbers, move_outs = set(used.numbers), set(used.move_outs)
    held = set(registered)
    quarantined_held = set(quarantined_holdings)
    cursor = dict(cursors)
    known = dict(certified or {})
    out: dict[int, Reason] = {}
    to_record: list[UsedCertificate] = []
    for i, n in enumerate(fresh):
        prefix = f"entries[{i}].notification"
        cert = certificates.get(i)
        if cert is not None:
            issuer = cert.issuing_local_government_code
            move_out = (issuer, cert.move_out_sequence)
            if cert.certificate_number in numbers or move_out in move_outs:
                if not national:
                    raise _refused(
                        Reason.MOVE_OUT_CERTIFICATE_REPLAYED,
                        f"{prefix}.move_out_certificate",
                        "already used here by another move-in",
                    )
                # Used in another prefecture first: the first use stands.
                out[i] = Reason.MOVE_OUT_CERTIFICATE_REPLAYED
            elif move_out in known and not is_move_out_of(known[move_out], cert.resident_code):
                if not national:
                    raise _refused(
                        Reason.MOVE_OUT_CERTIFICATE_NOT_HELD,
                        f"{prefix}.move_out_certificate",
                        f"{issuer} #{cert.move_out_sequence} is not this resident's move-out",
                    )
                out[i] = Reason.MOVE_OUT_CERTIFICATE_NOT_HELD
            else:
                numbers.add(cert.certificate_number)
                move_outs.add(move_out)
                to_record.append(UsedCertificate.of(cert, n))
                verdict = judge_holding(
                    cert,
                    current=records.get(cert.resident_code),
                    registered=held,
                    issuer_cursor=cursor.get(issuer, 0),
                    prefecture=prefecture,
                    prefix=prefix,
                    quarantined=quarantined_held,
                )
                if verdict is Verdict.QUARANTINE:
                    out[i] = Reason.MOVE_OUT_CERTIFICATE_NOT_HELD
        elif national and _follows_a_quarantined(n, records, held, quarantined_held, prefix):
            out[i] = Reason.NOT_HELD
        holding = registers(n)
        if holding is not None:
            if i in out:
                quarantined_held.add(holding)
            else:
                held.add(holding)
        cursor[n.origin_code] = max(cursor.get(n.origin_code, 0), n.sequence)
        known.setdefault((n.origin_code, n.sequence), n)
    return Screened(out, tuple(to_record))


def is_move_out_of(n: common_pb2.Notification, resident_code: str) -> bool:
    """Whether ``n`` is the move-out (to another municipality) of ``resident_code``."""
    return n.reason == common_pb2.CHANGE_REASON_MOVE_OUT and n.record.resident_code == resident_code


def _follows_a_quarantined(
    n: common_pb2.Notification,
    records: Mapping[str, StoredIdentity],
    held: Collection[Holding],
    quarantined_held: Collection[Holding],
    prefix: str,
) -> bool:
    """Whether ``n`` is a change by a municipality that holds the resident only
    by a registration kept refused (its later changes of a forged move-in's
    resident), to be kept refused with it."""
    code = acted_on(n)
    if code is None or (code, n.origin_code) not in quarantined_held:
        return False
    try:
        check_held(n, records, held, prefix)
    except PermissionDenied:
        return True
    return False


@dataclass(frozen=True)
class Contradiction:
    """A notification at the (issuer, sequence) that a move-in's certificate
    named before it arrived, which is not that resident's move-out."""

    notification: common_pb2.Notification
    used: UsedCertificate


def contradictions(
    fresh: Sequence[common_pb2.Notification],
    named: Mapping[tuple[str, int], UsedCertificate],
) -> list[Contradiction]:
    """The notifications of a batch that contradict a certificate naming them.

    ``named``: the certificates recorded used at this tier (by earlier batches
    or this one) by the (issuer, move-out sequence) they name, for the batch's
    (origin, sequence) pairs.
    """
    out = []
    for n in fresh:
        used = named.get((n.origin_code, n.sequence))
        if used is not None and not is_move_out_of(n, used.resident_code):
            out.append(Contradiction(n, used))
    return out


def certificates_to_look_up(
    certificates: Mapping[int, common_pb2.MoveOutCertificate],
) -> tuple[set[str], set[tuple[str, int]], set[Holding]]:
    """What the store must answer for a batch's certificates: their numbers, their
    (issuer, move-out sequence) pairs, and the (code, issuer) holdings."""
    numbers = {c.certificate_number for c in certificates.values()}
    move_outs = {
        (c.issuing_local_government_code, c.move_out_sequence) for c in certificates.values()
    }
    holdings = {(c.resident_code, c.issuing_local_government_code) for c in certificates.values()}
    return numbers, move_outs, holdings
