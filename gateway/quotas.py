"""Request quotas of the agency gateway: one token bucket per (agency, purpose).

A bucket holds at most ``burst`` tokens and gains ``requests_per_second`` of
them per second; every request (a VerifyBatch message counts as one) takes
one. An empty bucket refuses with :class:`QuotaExceeded`, which tells the
agency how long to wait (``retry-after-ms`` in the trailing metadata).

The clock is injectable so that the arithmetic can be tested without sleeping.
Buckets exist only for pairs the purpose registry has authorized, so their
number is bounded by the registry, not by what callers send.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from gateway.registry import Purpose
from jukinet.errors import ResourceExhausted
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


class QuotaExceeded(ResourceExhausted):
    """An agency's bucket for a purpose is empty; retry after ``retry_after_ms``."""

    reason = Reason.QUOTA_EXCEEDED

    def __init__(self, agency_code: str, purpose_code: str, wait_seconds: float) -> None:
        self.retry_after_ms = max(1, math.ceil(wait_seconds * 1000))
        super().__init__(
            f"quota of agency {agency_code} for purpose {purpose_code} exhausted; "
            f"retry after {self.retry_after_ms} ms"
        )
        self.agency_code = agency_code
        self.purpose_code = purpose_code

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The reason and the wait in ms, as text trailers."""
        return (*super().metadata(), (RETRY_AFTER_KEY, str(self.retry_after_ms)))


class Quotas:
    """The buckets of every (agency, purpose) pair, created on first use."""

    def __init__(self, *, clock: Clock = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def bucket(self, agency_code: str, purpose: Purpose) -> TokenBucket:
        """The bucket of ``agency_code`` for ``purpose``."""
        key = (agency_code, purpose.code)
        found = self._buckets.get(key)
        if found is None:
            quota = purpose.quota
            found = TokenBucket(quota.requests_per_second, quota.burst, clock=self._clock)
            self._buckets[key] = found
        return found

    def charge(self, agency_code: str, purpose: Purpose) -> None:
        """Take one request from the bucket, or raise :class:`QuotaExceeded`."""
        wait = self.bucket(agency_code, purpose).take()
        if wait > 0:
            raise QuotaExceeded(agency_code, purpose.code, wait)
