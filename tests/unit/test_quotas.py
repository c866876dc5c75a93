"""The gateway's token buckets, on a hand-driven clock."""

from __future__ import annotations

import grpc
import pytest

from gateway.quotas import QuotaExceeded, Quotas, TokenBucket
from jukinet.purposes import Purpose, load_registry
from jukinet.reasons import Reason


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        """The current time."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    """A clock at 100 s."""
    return FakeClock()


def purpose(code: str) -> Purpose:
    """Purpose ``code`` of the shipped registry."""
    found = load_registry().get(code)
    assert found is not None
    return found


def test_starts_full_and_refuses_when_empty(clock: FakeClock) -> None:
    bucket = TokenBucket(2.0, 5, clock=clock)
    assert [bucket.take() for _ in range(5)] == [0.0] * 5
    # Empty: one token comes back after 1 / rate seconds; nothing is taken.
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.take() == pytest.approx(0.5)
    assert bucket.tokens == pytest.approx(0.0)


def test_refills_at_the_rate(clock: FakeClock) -> None:
    bucket = TokenBucket(2.0, 5, clock=clock)
    for _ in range(5):
        bucket.take()
    clock.advance(0.25)  # half a token
    assert bucket.take() == pytest.approx(0.25)
    clock.advance(0.25)
    assert bucket.take() == 0.0
    assert bucket.take() == pytest.approx(0.5)
    clock.advance(1.0)
    assert bucket.take() == 0.0
    assert bucket.take() == 0.0
    assert bucket.take() > 0


def test_never_holds_more_than_the_burst(clock: FakeClock) -> None:
    bucket = TokenBucket(10.0, 3, clock=clock)
    clock.advance(3600)
    assert bucket.tokens == pytest.approx(3.0)
    assert [bucket.take() for _ in range(3)] == [0.0] * 3
    assert bucket.take() == pytest.approx(0.1)


def test_sustained_rate_matches(clock: FakeClock) -> None:
    """Over a long run, granted requests = burst + rate x elapsed time."""
    bucket = TokenBucket(4.0, 10, clock=clock)
    granted = 0
    for _ in range(10_000):  # 100 s in steps of 10 ms, asking 5 times per step
        for _ in range(5):
            granted += bucket.take() == 0.0
        clock.advance(0.01)
    assert granted == pytest.approx(10 + 4.0 * 100, abs=1)


def test_a_clock_stepping_back_neither_drains_nor_fills(clock: FakeClock) -> None:
    bucket = TokenBucket(1.0, 2, clock=clock)
    bucket.take()
    clock.advance(-50)
    assert bucket.tokens == pytest.approx(1.0)
    clock.advance(0.5)
    assert bucket.tokens == pytest.approx(1.5)


def test_take_several(clock: FakeClock) -> None:
    bucket = TokenBucket(1.0, 4, clock=clock)
    assert bucket.take(3) == 0.0
    assert bucket.take(3) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        bucket.take(5)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_bad_settings(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


def test_one_bucket_per_agency_and_purpose(clock: FakeClock) -> None:
    quotas = Quotas(clock=clock)
    existence = purpose("NENKIN-EXISTENCE-CHECK")  # 200/s, burst 2000
    address = purpose("NENKIN-ADDRESS-CHANGE")  # 10/s, burst 20
    for _ in range(existence.quota.burst):
        quotas.charge("nenkin", existence)
    with pytest.raises(QuotaExceeded) as caught:
        quotas.charge("nenkin", existence)
    # Another purpose of the same agency, and another agency, are untouched.
    quotas.charge("nenkin", address)
    quotas.charge("other", existence)
    assert quotas.bucket("nenkin", existence) is quotas.bucket("nenkin", existence)
    assert quotas.bucket("nenkin", existence) is not quotas.bucket("other", existence)

    err = caught.value
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.reason == Reason.QUOTA_EXCEEDED
    assert err.retry_after_ms == 5  # one token at 200/s
    assert dict(err.metadata()) == {"jukinet-reason": "quota-exceeded", "retry-after-ms": "5"}
    assert "NENKIN-EXISTENCE-CHECK" in err.message

    clock.advance(0.01)
    quotas.charge("nenkin", existence)


def test_retry_after_is_rounded_up_and_at_least_one_ms() -> None:
    assert QuotaExceeded("a", "P", 0.0101).retry_after_ms == 11
    assert QuotaExceeded("a", "P", 1e-9).retry_after_ms == 1
    assert QuotaExceeded("a", "P", 2.5).retry_after_ms == 2500


def test_a_batch_takes_one_token_per_verification(clock: FakeClock) -> None:
    """Counted in lookups: a message of n items takes n tokens, not one."""
    quotas = Quotas(clock=clock)
    existence = purpose("NENKIN-EXISTENCE-CHECK")  # 200/s, burst 2000, batches of 1000
    assert existence.quota.max_batch_size == 1000
    quotas.charge("nenkin", existence, 1000)
    quotas.charge("nenkin", existence, 1000)
    with pytest.raises(QuotaExceeded) as caught:
        quotas.charge("nenkin", existence, 1000)
    assert caught.value.retry_after_ms == 5000  # 1000 tokens at 200/s
    assert quotas.bucket("nenkin", existence).tokens == pytest.approx(0.0)
    # Sustained: 200 verifications a second, whatever the message size.
    clock.advance(5.0)
    quotas.charge("nenkin", existence, 1000)
    with pytest.raises(QuotaExceeded):
        quotas.charge("nenkin", existence, 1)


def test_every_registered_bucket_holds_a_full_batch() -> None:
    for p in load_registry():
        if p.quota.max_batch_size is not None:
            assert p.quota.burst >= p.quota.max_batch_size, p.code


def test_refusals_have_a_bucket_per_agency_counted_in_records(clock: FakeClock) -> None:
    quotas = Quotas(clock=clock, refusal_rate=2.0, refusal_burst=10)
    quotas.charge_refusal("nenkin", 4)
    quotas.charge_refusal("nenkin", 6)
    with pytest.raises(QuotaExceeded) as caught:
        quotas.charge_refusal("nenkin", 1)
    err = caught.value
    assert err.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert err.retry_after_ms == 500
    assert "refused requests" in err.message
    # Another agency, and the purposes' buckets, are untouched.
    quotas.charge_refusal("mofa-passport", 10)
    quotas.charge("nenkin", purpose("NENKIN-ADDRESS-CHANGE"))
    # More records than the bucket holds cost a full bucket (never a ValueError).
    clock.advance(60)
    quotas.charge_refusal("nenkin", 1_000_000)
    with pytest.raises(QuotaExceeded):
        quotas.charge_refusal("nenkin", 0)  # a refusal without records costs one


def test_the_shipped_refusal_bucket_records_a_full_denied_batch(clock: FakeClock) -> None:
    quotas = Quotas(clock=clock)
    largest = load_registry().max_batch_size
    assert quotas.refusal_bucket("nenkin").burst >= largest + 1
    quotas.charge_refusal("nenkin", largest + 1)
