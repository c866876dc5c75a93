"""Quotas of the agency gateway: one token bucket per (agency, purpose), and
one refusal bucket per agency.

A bucket holds at most ``burst`` tokens and gains ``requests_per_second`` of
them per second. A token is one lookup at the national node: a Verify,
Retrieve or Search takes one, a VerifyBatch message one per item, because the
national node's work (and the provision records) grows with the items, not
with the messages. An empty bucket refuses with :class:`QuotaExceeded`, which
tells the agency how long to wait (``retry-after-ms`` in the trailing metadata).

Refusals cost too: each refusal the registry makes is recorded at the national
node once per resident it names, so an agency's refusals take one token per
record from its refusal bucket. A refusal has a bucket of its own per agency,
not the purpose's: a refused purpose may not exist (a per-purpose bucket would
be keyed by whatever the caller invents) or may not be the agency's, and an
agency's mistakes must not eat into its statutory work. When the refusal
bucket is empty the call is answered RESOURCE_EXHAUSTED and nothing is recorded.

The clock is injectable so that the arithmetic can be tested without sleeping.
Buckets exist only for pairs the purpose registry has authorized and for
registered agencies (one shared refusal bucket for any other), so their number
is bounded by the registry, not by what callers send.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from jukinet.errors import ResourceExhausted
from jukinet.purposes import Purpose
from jukinet.reasons import Reason

Clock = Callable[[], float]
"""Seconds on a monotonic scale (``time.monotonic``)."""

RETRY_AFTER_KEY = "retry-after-ms"


class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` tokens a second; starts full."""

    __slots__ = ("_clock", "_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, *, clock: Clock = time.monotonic) -> None:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate must be positive and finite, not {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, not {burst!r}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def _refill(self) -> None:
        now = self._clock()
        # A clock that steps back (it should not) must not drain the bucket.
        elapsed = max(0.0, now - self._last)
        self._last = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)

    @property
    def tokens(self) -> float:
        """Tokens available now."""
        self._refill()
        return self._tokens

    def take(self, count: float = 1.0) -> float:
        """Take ``count`` tokens: 0.0 if granted, else the seconds until they
        would be there (and nothing is taken)."""
        if count > self.burst:
            raise ValueError(f"cannot take {count} tokens from a bucket of {self.burst}")
        self._refill()
        if self._tokens >= count:
            self._tokens -= count
            return 0.0
        return (count - self._tokens) / self.rate


# The refusal bucket of each agency, counted in denial records: a message
# naming as many residents as the largest refusal records (see
# gateway.logic.MAX_DENIAL_CODES) fits a full bucket; after that, a few a second.
REFUSAL_RATE = 2.0
REFUSAL_BURST = 1001


class QuotaExceeded(ResourceExhausted):
    """An agency's bucket for a purpose (or for its refusals, when
    ``purpose_code`` is empty) is empty; retry after ``retry_after_ms``."""

    reason = Reason.QUOTA_EXCEEDED

    def __init__(self, agency_code: str, purpose_code: str, wait_seconds: float) -> None:
        self.retry_after_ms = max(1, math.ceil(wait_seconds * 1000))
        what = f"for purpose {purpose_code}" if purpose_code else "for refused requests"
        super().__init__(
            f"quota of agency {agency_code} {what} exhausted; retry after {self.retry_after_ms} ms"
        )
        self.agency_code = agency_code
        self.purpose_code = purpose_code

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The reason and the wait in ms, as text trailers."""
        return (*super().metadata(), (RETRY_AFTER_KEY, str(self.retry_after_ms)))


class Quotas:
    """The buckets of every (agency, purpose) pair and every agency's refusal
    bucket, created on first use."""

    def __init__(
        self,
        *,
        clock: Clock = time.monotonic,
        refusal_rate: float = REFUSAL_RATE,
        refusal_burst: int = REFUSAL_BURST,
    ) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}
        self._refusals: dict[str, TokenBucket] = {}
        self._refusal_rate = refusal_rate
        self._refusal_burst = refusal_burst

    def bucket(self, agency_code: str, purpose: Purpose) -> TokenBucket:
        """The bucket of ``agency_code`` for ``purpose``."""
        key = (agency_code, purpose.code)
        found = self._buckets.get(key)
        if found is None:
            quota = purpose.quota
            found = TokenBucket(quota.requests_per_second, quota.burst, clock=self._clock)
            self._buckets[key] = found
        return found

    def charge(self, agency_code: str, purpose: Purpose, lookups: int = 1) -> None:
        """Take ``lookups`` tokens from the bucket, or raise :class:`QuotaExceeded`
        (the registry makes every bucket hold a full VerifyBatch message)."""
        wait = self.bucket(agency_code, purpose).take(lookups)
        if wait > 0:
            raise QuotaExceeded(agency_code, purpose.code, wait)

    def refusal_bucket(self, agency_key: str) -> TokenBucket:
        """The refusal bucket of ``agency_key`` (a registered agency, or one
        shared key for every other)."""
        found = self._refusals.get(agency_key)
        if found is None:
            found = TokenBucket(self._refusal_rate, self._refusal_burst, clock=self._clock)
            self._refusals[agency_key] = found
        return found

    def charge_refusal(self, agency_key: str, records: int) -> None:
        """Take one token per denial record (at most a full bucket), or raise
        :class:`QuotaExceeded`."""
        bucket = self.refusal_bucket(agency_key)
        wait = bucket.take(min(max(1, records), bucket.burst))
        if wait > 0:
            raise QuotaExceeded(agency_key, "", wait)
