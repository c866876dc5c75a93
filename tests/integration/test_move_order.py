"""The upper tiers order the two halves of a move by cause, over real mutual
TLS: a resident who moves from 312011 to 312029 and back on one day stays at
312011 at the prefecture and the national node, although 312029's move-in and
move-out arrive after the return (same effective date, so the date cannot
tell). Both municipalities' notifications are pushed directly with their own
node keys, each certificate signed by its issuer's node key."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from jukinet import movecert
from jukinet.client import tls_files
from jukinet.tls import secure_channel
from jukinet.v1 import common_pb2, delivery_pb2, prefecture_pb2_grpc
from jukinet.vocabulary import Person
from tests.federation import Federation
from tests.integration.test_bad_input import batch, cursor, push
from tests.integration.test_holding import ADDRESSES, TOTTORI, YONAGO, person
from tests.integration.test_upper_tier_certificates import until_national_cursor

C = common_pb2
TIMEOUT = 15
DAY = "2025-06-10"

KIND = {
    C.CHANGE_REASON_BIRTH: C.CHANGE_KIND_CREATED,
    C.CHANGE_REASON_MOVE_IN: C.CHANGE_KIND_CREATED,
    C.CHANGE_REASON_MOVE_OUT: C.CHANGE_KIND_REMOVED,
}


class Municipality:
    """A municipality whose node is stopped, speaking to its prefecture with the
    node's own key and numbering its notifications after what was applied."""

    def __init__(self, fed: Federation, code: str, last: int) -> None:
        self.code = code
        self.next = last + 1
        files = tls_files(fed.pki_dir, f"municipality-{code}")
        self.channel = secure_channel(f"127.0.0.1:{fed.prefecture_ports['31']}", files)
        self.stub = prefecture_pb2_grpc.PrefectureServiceStub(self.channel)
        key = serialization.load_pem_private_key(files.key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self.key = key
        self.cert = x509.load_pem_x509_certificate(files.cert.read_bytes())

    def notify(
        self,
        reason: C.ChangeReason.ValueType,
        code: str,
        date: str,
        certificate: C.SignedMoveOutCertificate | None = None,
    ) -> C.Notification:
        """The next notification of this municipality."""
        details = person(self.code)
        n = C.Notification(
            origin_code=self.code,
            sequence=self.next,
            kind=KIND[reason],
            reason=reason,
            effective_date=date,
            recorded_at=dt.datetime.now(dt.UTC).isoformat(),
            record=C.IdentityRecord(
                resident_code=code,
                name=details.name,
                name_kana=details.name_kana,
                birth_date="2025-06-01",
                sex=details.sex,
                address=ADDRESSES[self.code],
                local_government_code=self.code,
            ),
        )
        if certificate is not None:
            n.move_out_certificate.CopyFrom(certificate)
        self.next += 1
        return n

    def certify(self, move_out: C.Notification, destination: str) -> C.SignedMoveOutCertificate:
        """The move-out certificate of ``move_out``, signed by this node's key."""
        certificate = movecert.build(
            issuer=self.code,
            resident_code=move_out.record.resident_code,
            person=Person.of(move_out.record),
            planned_date=move_out.effective_date,
            destination=destination,
            move_out_sequence=move_out.sequence,
            issued_at=dt.datetime.now(dt.UTC),
        )
        return movecert.sign(certificate, self.key, self.cert)

    async def send(self, *notifications: C.Notification) -> None:
        """Push one batch; every entry must be applied."""
        status, meta, acks = await push(self.stub, batch(*((n.sequence, n) for n in notifications)))
        assert status == grpc.StatusCode.OK, meta
        assert sum(a.applied for a in acks) == len(notifications)


@pytest.fixture
async def tottori_and_yonago(fed: Federation) -> AsyncIterator[tuple[Municipality, Municipality]]:
    """312011 and 312029 speaking directly to prefecture 31 (their nodes stopped)."""
    for code in (TOTTORI, YONAGO):
        await fed.municipalities.pop(code).stop()
        fed.municipal_ports.pop(code)
    status = await fed.prefecture_operator("31").GetDeliveryStatus(
        delivery_pb2.GetDeliveryStatusRequest(), timeout=TIMEOUT
    )
    pair = (
        Municipality(fed, TOTTORI, cursor(status, TOTTORI)),
        Municipality(fed, YONAGO, cursor(status, YONAGO)),
    )
    try:
        yield pair
    finally:
        for m in pair:
            await m.channel.close(grace=None)


async def test_there_and_back_on_one_day_ends_at_the_first_municipality(
    fed: Federation, tottori_and_yonago: tuple[Municipality, Municipality]
) -> None:
    a, b = tottori_and_yonago
    pool = await a.stub.AllocateCodePool(
        delivery_pb2.AllocateCodePoolRequest(
            municipality_code=TOTTORI, count=1, request_id="move-order-birth"
        ),
        timeout=TIMEOUT,
    )
    code = pool.resident_codes[0]
    birth = a.notify(C.CHANGE_REASON_BIRTH, code, "2025-06-01")
    out_of_a = a.notify(C.CHANGE_REASON_MOVE_OUT, code, DAY)
    into_b = b.notify(C.CHANGE_REASON_MOVE_IN, code, DAY, a.certify(out_of_a, YONAGO))
    out_of_b = b.notify(C.CHANGE_REASON_MOVE_OUT, code, DAY)
    back_in_a = a.notify(C.CHANGE_REASON_MOVE_IN, code, DAY, b.certify(out_of_b, TOTTORI))
    # 312011's whole stream first, then 312029's: ordered by date alone, the
    # move-in at 312029 (same day) would take the resident away again and its
    # move-out would leave them removed there.
    await a.send(birth, out_of_a, back_in_a)
    await b.send(into_b, out_of_b)
    # Their nodes are stopped: wait for the relay of what was pushed for them.
    await until_national_cursor(fed, TOTTORI, back_in_a.sequence)
    await until_national_cursor(fed, YONAGO, out_of_b.sequence)
    for stub in (fed.prefecture_operator("31"), fed.national_operator()):
        r = await stub.GetIdentity(
            delivery_pb2.GetIdentityRequest(resident_code=code), timeout=TIMEOUT
        )
        assert (r.identity.record.local_government_code, r.identity.status) == (
            TOTTORI,
            C.RECORD_STATUS_ACTIVE,
        )
        assert r.identity.record.address == ADDRESSES[TOTTORI]
        applied = [
            (h.notification.origin_code, h.notification.reason, h.changed_current)
            for h in r.history
        ]
        # Both tiers apply the return ahead of its cause (312029's notifications
        # are on their way) and 312029's halves after it, in the order of
        # cause: stored, but the record already follows them.
        assert applied == [
            (TOTTORI, C.CHANGE_REASON_BIRTH, True),
            (TOTTORI, C.CHANGE_REASON_MOVE_OUT, True),
            (TOTTORI, C.CHANGE_REASON_MOVE_IN, True),
            (YONAGO, C.CHANGE_REASON_MOVE_IN, False),
            (YONAGO, C.CHANGE_REASON_MOVE_OUT, False),
        ]
