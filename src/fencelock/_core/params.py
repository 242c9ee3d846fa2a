"""Lock parameters, validated once, before any I/O; and the pure timing rules of a lease.

Nothing here touches the network or a thread, so the rules are tested with a fake clock.
"""

from __future__ import annotations

import math
import os
import random
import secrets
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .._errors import ConfigurationError

__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_TTL",
    "DRIFT_FACTOR",
    "LockParams",
    "backoff",
    "lease_deadline",
    "new_token",
]

DEFAULT_TTL = 30.0
"""Lease length in seconds when none is given; renewal keeps a longer critical section alive."""

DEFAULT_ACQUIRE_TIMEOUT = 10.0
"""How long ``acquire()`` waits when no timeout is given. No default waits forever."""

DRIFT_FACTOR = 0.01
"""Share of the TTL taken off the client-side deadline for clock-rate drift between client and
server (as Redlock does), plus ``DRIFT_FLOOR`` seconds. A lease therefore ends on the client a
little *before* the server lets the key go, never after."""

DRIFT_FLOOR = 0.002

Clock = Callable[[], float]


def new_token() -> str:
    """128 random bits from the OS CSPRNG, hex: unguessable, fixed length (32 characters)."""
    return secrets.token_hex(16)


def default_label() -> str:
    """Who holds the lock, for operators: ``hostname:pid``. Stored with the lock, never the token."""
    return f"{socket.gethostname()}:{os.getpid()}"


def lease_deadline(sent_at: float, ttl: float) -> float:
    """The client-side end of a lease whose request was *sent* at ``sent_at`` (monotonic).

    Measured from before the request left, so network delay and server time eat into the lease and
    never extend it; shortened by the drift allowance.
    """
    return sent_at + ttl - (ttl * DRIFT_FACTOR + DRIFT_FLOOR)


def backoff(attempt: int, base: float = 0.005, cap: float = 0.25) -> float:
    """Full-jitter exponential backoff (AWS architecture blog): uniform in [0, min(cap, base*2^n)]."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 16))))


@dataclass(frozen=True, slots=True)
class LockParams:
    """Validated settings of one lock. Construct with ``LockParams.make``."""

    name: str
    ttl: float
    renew_interval: float | None
    acquire_timeout: float
    label: str

    @property
    def ttl_ms(self) -> int:
        return max(1, int(self.ttl * 1000))

    @staticmethod
    def make(
        name: str,
        ttl: float,
        renew: bool | float,
        acquire_timeout: float,
        label: str | None,
    ) -> LockParams:
        if not isinstance(name, str) or not name:
            raise ConfigurationError(
                f"lock name must be a non-empty string, got {name!r}; name the resource, e.g. 'file:2024-01.tsv'"
            )
        if "\x00" in name:
            raise ConfigurationError("lock name must not contain NUL characters")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
            raise ConfigurationError(
                f"ttl must be a positive number of seconds, got {ttl!r}; a lease must end so a crashed "
                "holder cannot block the others forever"
            )
        if ttl < 0.01:
            raise ConfigurationError(f"ttl {ttl!r} s is below 10 ms; no network round trip fits in it")
        interval: float | None
        if renew is True:
            interval = ttl / 3
        elif renew is False or renew is None:
            interval = None
        else:
            if not isinstance(renew, (int, float)) or not math.isfinite(renew) or renew <= 0:
                raise ConfigurationError(f"renew must be True, False or a positive interval in seconds, got {renew!r}")
            if renew >= ttl:
                raise ConfigurationError(
                    f"renew interval {renew!r} s must be shorter than ttl {ttl!r} s, or the lease expires "
                    f"between renewals; about ttl/3 ({ttl / 3:.3g} s) leaves room for two failed attempts"
                )
            interval = float(renew)
        check_timeout(acquire_timeout, "acquire_timeout")
        return LockParams(name, float(ttl), interval, float(acquire_timeout), label or default_label())


def check_timeout(timeout: float, what: str = "timeout") -> float:
    """Reject negative, NaN and infinite waits with a message that says what to do."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or math.isnan(timeout):
        raise ConfigurationError(f"{what} must be a number of seconds, got {timeout!r}")
    if timeout < 0:
        raise ConfigurationError(f"{what} must be >= 0 seconds (0 means a single attempt), got {timeout!r}")
    if math.isinf(timeout):
        raise ConfigurationError(
            f"{what} must be finite: every wait in fencelock is bounded; pass a large number of seconds "
            "if you really mean to wait that long"
        )
    return float(timeout)
