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
    "MAX_TTL",
    "LockParams",
    "backoff",
    "check_label",
    "check_name",
    "check_timeout",
    "check_ttl",
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
        check_name(name)
        ttl = check_ttl(ttl)
        interval: float | None
        if renew is True:
            interval = ttl / 3
        elif renew is False or renew is None:
            interval = None
        else:
            if isinstance(renew, bool) or not isinstance(renew, (int, float)) or not math.isfinite(renew) or renew <= 0:
                raise ConfigurationError(f"renew must be True, False or a positive interval in seconds, got {renew!r}")
            if renew > ttl * RENEW_MARGIN:
                raise ConfigurationError(
                    f"renew interval {renew!r} s leaves no margin in a {ttl:g} s lease: a renewal must be able to "
                    f"fail once and be retried before the lease ends, so the interval is at most ttl/2 "
                    f"({ttl * RENEW_MARGIN:.3g} s); renew=True (ttl/3, {ttl / 3:.3g} s) leaves room for two "
                    "failed attempts"
                )
            interval = float(renew)
        check_timeout(acquire_timeout, "acquire_timeout")
        return LockParams(name, ttl, interval, float(acquire_timeout), check_label(label))


MAX_TTL = 30 * 86400.0
"""Longest lease, in seconds (30 days). A lease is how long a crashed holder can block the others;
longer ones are a mistake (or a unit error: milliseconds for seconds). Renewal keeps a long job
alive with a short lease."""

RENEW_MARGIN = 0.5
"""Longest renewal interval, as a share of the TTL: room for one failed renewal and its retry."""


def check_name(name: object) -> str:
    """A lock name: a non-empty string that any server can store (valid Unicode, no NUL)."""
    if not isinstance(name, str) or not name:
        raise ConfigurationError(
            f"lock name must be a non-empty string, got {name!r}; name the resource, e.g. 'file:2024-01.tsv'"
        )
    if "\x00" in name:
        raise ConfigurationError("lock name must not contain NUL characters")
    _check_text(name, "lock name")
    return name


def check_label(label: object) -> str:
    """The holder's label shown to operators (default ``hostname:pid``): text, valid Unicode, no NUL."""
    if label is None or label == "":
        return default_label()
    if not isinstance(label, str):
        raise ConfigurationError(
            f"label must be a string naming the holder (shown by `fencelock status`), got {type(label).__name__}"
        )
    if "\x00" in label:
        raise ConfigurationError("label must not contain NUL characters")
    _check_text(label, "label")
    if len(label.encode()) > 1024:
        raise ConfigurationError("label must be at most 1024 bytes (it is stored with every lease)")
    return label


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise ConfigurationError(
            f"{what} {text!r} is not valid Unicode text (a lone surrogate at position {err.start}); "
            "servers store names as UTF-8"
        ) from None


def check_ttl(ttl: object) -> float:
    """A lease length in seconds: a finite number between 10 ms and ``MAX_TTL``."""
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl <= 0:
        raise ConfigurationError(
            f"ttl must be a positive number of seconds, got {ttl!r}; a lease must end so a crashed "
            "holder cannot block the others forever"
        )
    if ttl < 0.01:
        raise ConfigurationError(f"ttl {ttl!r} s is below 10 ms; no network round trip fits in it")
    if ttl > MAX_TTL:
        raise ConfigurationError(
            f"ttl {ttl!r} s is longer than {MAX_TTL / 86400:g} days: a crashed holder would block the others "
            "that long (seconds, not milliseconds?); keep the lease short and let renewal extend it"
        )
    return float(ttl)


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
