"""The upper tiers order a resident's changes by cause: whatever order the
municipalities' streams interleave in, the record ends as the register of the
municipality that holds the resident last says, also when moves, births and
deaths share one effective date."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jukinet import movecert, pki
from jukinet.delivery.rules import (
    ACTIVE,
    REMOVED,
    SUPERSEDED,
    StoredIdentity,
    certificate_link,
    decide,
    holdings_to_look_up,
    merge_follows,
)
from jukinet.delivery.store import decode_follows, encode_follows
from jukinet.identity import Identity
from jukinet.v1 import common_pb2 as pb
from jukinet.vocabulary import Person
from tests.unit.test_delivery_rules import Tier

A, B, C = "312011", "312029", "131016"
CODES = ("12345678903", "24727059608", "36912345670", "48123456789")
DAY = "2026-11-16"

KINDS = {
    pb.CHANGE_REASON_BIRTH: pb.CHANGE_KIND_CREATED,
    pb.CHANGE_REASON_MOVE_IN: pb.CHANGE_KIND_CREATED,
    pb.CHANGE_REASON_MOVE_IN_FROM_ABROAD: pb.CHANGE_KIND_CREATED,
    pb.CHANGE_REASON_MOVE_OUT: pb.CHANGE_KIND_REMOVED,
    pb.CHANGE_REASON_DEATH: pb.CHANGE_KIND_REMOVED,
    pb.CHANGE_REASON_RELOCATION: pb.CHANGE_KIND_AMENDED,
    pb.CHANGE_REASON_CODE_CHANGE: pb.CHANGE_KIND_AMENDED,
}

Sign = Callable[[pb.MoveOutCertificate], pb.SignedMoveOutCertificate]


def unsigned(certificate: pb.MoveOutCertificate) -> pb.SignedMoveOutCertificate:
    """The certificate's bytes without a signature (the rules do not verify it)."""
    return pb.SignedMoveOutCertificate(certificate=certificate.SerializeToString())


@dataclass
class Register:
    """The registers of a few municipalities for one person: what each sends up,
    in its own order, and what the registers say at the end."""

    sign: Sign = unsigned
    streams: dict[str, list[pb.Notification]] = field(default_factory=dict)
    code: str = CODES[0]
    at: str = ""
    date: str = DAY
    alive: bool = True
    changes: int = 0
    truth: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    pools: dict[str, str] = field(default_factory=dict)

    def _send(
        self,
        origin: str,
        reason: pb.ChangeReason.ValueType,
        *,
        certificate: pb.SignedMoveOutCertificate | None = None,
        previous: str = "",
    ) -> pb.Notification:
        stream = self.streams.setdefault(origin, [])
        n = pb.Notification(
            origin_code=origin,
            sequence=len(stream) + 1,
            kind=KINDS[reason],
            reason=reason,
            effective_date=self.date,
            record=pb.IdentityRecord(
                resident_code=self.code,
                name="池田　桃子",
                birth_date="2026-01-01",
                sex=pb.SEX_FEMALE,
                address=f"{origin} {reason} {len(stream) + 1}",
                local_government_code=origin,
            ),
            previous_resident_code=previous,
        )
        if certificate is not None:
            n.move_out_certificate.CopyFrom(certificate)
        stream.append(n)
        status = REMOVED if n.kind == pb.CHANGE_KIND_REMOVED else ACTIVE
        self.truth[self.code] = (origin, status, n.record.address)
        return n

    def born(self, at: str) -> Register:
        """The person is born at ``at``."""
        self.at = at
        self.pools[self.code] = at
        self._send(at, pb.CHANGE_REASON_BIRTH)
        return self

    def move(self, to: str) -> Register:
        """The person moves from where they are to ``to``, on the certificate."""
        out = self._send(self.at, pb.CHANGE_REASON_MOVE_OUT)
        certificate = movecert.build(
            issuer=self.at,
            resident_code=self.code,
            person=Person.of(out.record),
            planned_date=self.date,
            destination=to,
            move_out_sequence=out.sequence,
            issued_at=dt.datetime(2026, 11, 16, tzinfo=dt.UTC),
        )
        self.at = to
        self._send(to, pb.CHANGE_REASON_MOVE_IN, certificate=self.sign(certificate))
        return self

    def relocate(self) -> Register:
        """The person moves house within the municipality."""
        self._send(self.at, pb.CHANGE_REASON_RELOCATION)
        return self

    def change_code(self) -> Register:
        """The municipality gives the person a new code."""
        old = self.code
        self.changes += 1
        self.code = CODES[self.changes]
        self.pools[self.code] = self.at
        self.truth[old] = (self.at, SUPERSEDED, self.code)
        self._send(self.at, pb.CHANGE_REASON_CODE_CHANGE, previous=old)
        return self

    def die(self) -> Register:
        """The person dies where they are registered."""
        self._send(self.at, pb.CHANGE_REASON_DEATH)
        self.alive = False
        return self

    def next_day(self) -> Register:
        """What follows happens a day later."""
        self.date = (dt.date.fromisoformat(self.date) + dt.timedelta(days=1)).isoformat()
        return self


def final_state(register: Register, order: Sequence[pb.Notification], batch: int = 1) -> Tier:
    """The tier after folding ``order`` in batches of ``batch``."""
    tier = Tier(register.pools)
    for i in range(0, len(order), batch):
        tier.push(list(order[i : i + batch]))
    return tier


def assert_register_truth(register: Register, tier: Tier, order: object) -> None:
    """Every code of the person ends as the registers say."""
    for code, (where, status, detail) in register.truth.items():
        record = tier.records[code]
        got = (record.local_government_code, record.status)
        assert got == (where, status), (code, order)
        if status == SUPERSEDED:
            assert record.replaced_by == detail, (code, order)
        else:
            assert record.address == detail, (code, order)


def interleavings(streams: Sequence[Sequence[pb.Notification]]) -> Iterator[list[pb.Notification]]:
    """Every merge of the streams that keeps each stream's own order."""
    if not streams:
        yield []
        return
    first, rest = streams[0], streams[1:]
    for merged_rest in interleavings(rest):
        total = len(first) + len(merged_rest)
        for positions in itertools.combinations(range(total), len(first)):
            chosen = set(positions)
            ia, ib = iter(first), iter(merged_rest)
            yield [next(ia) if i in chosen else next(ib) for i in range(total)]


def every_order_ends_as_the_registers_say(register: Register) -> int:
    """Fold every interleaving (one by one and as one batch); the number tried."""
    streams = list(register.streams.values())
    count = 0
    for order in interleavings(streams):
        assert_register_truth(register, final_state(register, order), order)
        count += 1
    return count


# -- signed certificates, as the municipal node issues them -----------------------


@pytest.fixture(scope="module")
def signers(tmp_path_factory: pytest.TempPathFactory) -> Sign:
    """Each municipality signs with its own node key under a throwaway CA."""
    directory: Path = tmp_path_factory.mktemp("ca")
    pki.create_ca(directory)
    keys: dict[str, tuple[x509.Certificate, ec.EllipticCurvePrivateKey]] = {}
    for code in (A, B, C):
        issued = pki.issue(directory, Identity.municipality(code), f"m{code}")
        key = serialization.load_pem_private_key(issued.key_path.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        keys[code] = (x509.load_pem_x509_certificate(issued.cert_path.read_bytes()), key)

    def sign(certificate: pb.MoveOutCertificate) -> pb.SignedMoveOutCertificate:
        cert, key = keys[certificate.issuing_local_government_code]
        return movecert.sign(certificate, key, cert)

    return sign


def test_there_and_back_on_one_day(signers: Sign) -> None:
    # A -> B and back to A on one day: B's move-in and move-out arriving after
    # A's return must not take the person away from A.
    register = Register(signers).born(A).next_day().move(B).move(A)
    assert register.truth[register.code][:2] == (A, ACTIVE)
    assert every_order_ends_as_the_registers_say(register) == 10
    late_b = [*register.streams[A], *register.streams[B]]
    tier = final_state(register, late_b)
    assert tier.records[register.code].follows == ((A, 3), (B, 2))


def test_a_birth_and_a_move_on_the_day_of_birth(signers: Sign) -> None:
    # The birth notice arriving after the move-in must not register the
    # person at the old municipality again (where the move-out then removes them).
    register = Register(signers, date="2026-01-01").born(A).move(B)
    assert every_order_ends_as_the_registers_say(register) == 3
    move_in_first = [*register.streams[B], *register.streams[A]]
    states: dict[str, StoredIdentity] = {}
    flags = []
    for n in move_in_first:
        decision = decide(states, n)
        states.update({r.resident_code: r for r in decision.states})
        flags.append(decision.changed_current)
    assert flags == [True, False, False]
    assert (states[register.code].local_government_code, states[register.code].status) == (
        B,
        ACTIVE,
    )


def test_a_round_of_three_municipalities_on_one_day(signers: Sign) -> None:
    register = Register(signers).born(A).move(B).relocate().move(C).move(A)
    assert every_order_ends_as_the_registers_say(register) > 100


def test_a_code_change_between_moves_on_one_day() -> None:
    register = Register().born(A).move(B).change_code().move(C).die()
    assert register.truth[CODES[0]] == (B, SUPERSEDED, CODES[1])
    assert every_order_ends_as_the_registers_say(register) > 10


def test_a_death_after_moving_back_and_forth() -> None:
    register = Register().born(A).move(B).move(A).move(B).die()
    every_order_ends_as_the_registers_say(register)


# -- random lives, random interleavings -------------------------------------------------


@st.composite
def lives(draw: st.DrawFn) -> Register:
    """A person's life across two or three municipalities, mostly on one day."""
    places = draw(st.sampled_from([(A, B), (A, B, C)]))
    register = Register().born(draw(st.sampled_from(places)))
    for _ in range(draw(st.integers(0, 7))):
        if draw(st.integers(0, 4)) == 0:
            register.next_day()
        step = draw(st.sampled_from(["move", "move", "move", "relocate", "code", "die"]))
        if step == "move":
            register.move(draw(st.sampled_from([p for p in places if p != register.at])))
        elif step == "relocate":
            register.relocate()
        elif step == "code" and register.changes < len(CODES) - 1:
            register.change_code()
        elif step == "die":
            register.die()
            break
    return register


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(register=lives(), data=st.data())
def test_any_interleaving_ends_as_the_registers_say(
    register: Register, data: st.DataObject
) -> None:
    pending = {o: list(s) for o, s in register.streams.items()}
    order: list[pb.Notification] = []
    while any(pending.values()):
        origin = data.draw(st.sampled_from(sorted(o for o, s in pending.items() if s)))
        order.append(pending[origin].pop(0))
    batch = data.draw(st.integers(1, 4))
    assert_register_truth(register, final_state(register, order, batch), order)


# -- what the rules read from a certificate, and what the store keeps ---------------------


def _move_in(certificate: bytes) -> pb.Notification:
    n = pb.Notification(
        origin_code=B,
        sequence=1,
        kind=pb.CHANGE_KIND_CREATED,
        reason=pb.CHANGE_REASON_MOVE_IN,
        effective_date=DAY,
        record=pb.IdentityRecord(resident_code=CODES[0], local_government_code=B),
    )
    n.move_out_certificate.certificate = certificate
    return n


def test_a_move_in_follows_the_move_out_its_certificate_names() -> None:
    good = pb.MoveOutCertificate(
        issuing_local_government_code=A, resident_code=CODES[0], move_out_sequence=7
    )
    assert certificate_link(_move_in(good.SerializeToString())) == (A, 7)
    other_code = pb.MoveOutCertificate(
        issuing_local_government_code=A, resident_code=CODES[1], move_out_sequence=7
    )
    own = pb.MoveOutCertificate(
        issuing_local_government_code=B, resident_code=CODES[0], move_out_sequence=7
    )
    no_sequence = pb.MoveOutCertificate(issuing_local_government_code=A, resident_code=CODES[0])
    for raw in (
        b"",
        b"\xff\xff\xff\xff",
        b"\x0a\x05abc",
        other_code.SerializeToString(),
        own.SerializeToString(),
        no_sequence.SerializeToString(),
    ):
        assert certificate_link(_move_in(raw)) is None, raw


def test_unreadable_certificate_bytes_fall_back_to_the_effective_date() -> None:
    stored = StoredIdentity.from_notification(
        pb.Notification(
            origin_code=A,
            sequence=2,
            kind=pb.CHANGE_KIND_REMOVED,
            reason=pb.CHANGE_REASON_MOVE_OUT,
            effective_date="2026-11-17",
            record=pb.IdentityRecord(resident_code=CODES[0], local_government_code=A),
        ),
        REMOVED,
    )
    stored = dataclasses.replace(stored, registered_since="2026-11-17")
    # Older than the registration it would replace, without a causal link: refused.
    assert decide({CODES[0]: stored}, _move_in(b"\xff\x00garbage")).states == ()
    later = _move_in(b"\xff\x00garbage")
    later.effective_date = "2026-11-18"
    (record,) = decide({CODES[0]: stored}, later).states
    assert (record.local_government_code, record.follows) == (B, ((A, 2), (B, 1)))


def test_follows_round_trip_through_the_column() -> None:
    follows = merge_follows(((C, 4), (A, 2)), ((A, 9),))
    assert follows == ((C, 4), (A, 9))
    assert encode_follows(follows) == '{"131016":4,"312011":9}'
    assert decode_follows(encode_follows(follows)) == follows
    assert encode_follows(()) == "" and decode_follows("") == ()
    for garbage in ("[1]", "{", '{"312011":"x"}', '{"312011":true}', '{"312011":-1}', "null"):
        assert decode_follows(garbage) == (), garbage


def test_a_relayed_batch_with_a_move_in_before_the_late_move_out() -> None:
    # The national node's batches carry several origins: 312029's move-in comes
    # first in the batch, so 312011's move-out no longer finds the record at
    # 312011 and needs the history's word that 312011 holds the resident.
    register = Register().born(A).move(B)
    birth, move_out = register.streams[A]
    (move_in,) = register.streams[B]
    tier = final_state(register, [birth])
    assert holdings_to_look_up([move_in, move_out], tier.records) == {(CODES[0], A)}
    tier.push([move_in, move_out])
    assert_register_truth(register, tier, "relayed")
