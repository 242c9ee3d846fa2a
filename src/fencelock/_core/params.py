"""Lock parameters, validated once, before any I/O; and the pure timing rules of a lease.

Nothing here touches the network or a thread, so the rules are tested with a fake clock.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
from collections.abc import Callable

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
    "current_pid",
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
    """128 random bits from the OS CSPRNG (``os.urandom``, as ``secrets.token_hex``), hex:
    unguessable, fixed length (32 characters).

    A token is made per acquire, and a system call per token cost a microsecond: the bytes are
    read 4 KiB at a time and handed out 16 at a time, each once (under a lock, so two threads
    never get the same bytes). A forked child drops what it inherited (``os.register_at_fork``)
    so that it never hands out the bytes its parent will hand out too."""
    global _pool, _taken
    with _pool_lock:
        start = _taken
        if start + 16 > len(_pool):
            _pool = _urandom(_POOL_BYTES)
            start = 0
        _taken = start + 16
        return _pool[start : start + 16].hex()


_urandom = os.urandom
_POOL_BYTES = 4096
_pool = b""
_taken = 0
_pool_lock = threading.Lock()


def _new_pool_in_child() -> None:
    global _pool, _taken, _pool_lock
    _pool, _taken, _pool_lock = b"", 0, threading.Lock()


class _Process:
    """This process's pid, kept current across ``fork`` (``os.getpid()`` is a system call, and
    every lease checks it when it is made and released)."""

    pid = os.getpid()


def _forked() -> None:
    _Process.pid = os.getpid()
    _new_pool_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def current_pid() -> int:
    """``os.getpid()``, without the system call."""
    return _Process.pid


_label: tuple[int, str] = (0, "")


def default_label() -> str:
    """Who holds the lock, for operators: ``hostname:pid``. Stored with the lock, never the token.
    Computed once per process (a forked child has another pid, so it computes its own)."""
    global _label
    pid = os.getpid()
    if _label[0] != pid:
        _label = (pid, f"{socket.gethostname()}:{pid}")
    return _label[1]


def lease_deadline(sent_at: float, ttl: float) -> float:
    """The client-side end of a lease whose request was *sent* at ``sent_at`` (monotonic).

    Measured from before the request left, so network delay and server time eat into the lease and
    never extend it; shortened by the drift allowance.
    """
    return sent_at + ttl - (ttl * DRIFT_FACTOR + DRIFT_FLOOR)


def backoff(attempt: int, base: float = 0.005, cap: float = 0.25) -> float:
    """Full-jitter exponential backoff (AWS architecture blog): uniform in [0, min(cap, base*2^n)]."""
    return random.uniform(0, min(cap, base * (2 ** min(attempt, 16))))


class LockParams:
    """Validated settings of one lock. Construct with ``LockParams.make``; treat as read-only.

    A plain class with slots (not a frozen dataclass, whose ``__init__`` sets each field through
    ``object.__setattr__``), and ``ttl_ms`` computed once: a lock is made per name, and its
    settings are read on every acquire."""

    __slots__ = ("acquire_timeout", "label", "name", "renew_interval", "ttl", "ttl_ms")

    def __init__(self, name: str, ttl: float, renew_interval: float | None, acquire_timeout: float, label: str) -> None:
        self.name = name
        self.ttl = ttl
        self.renew_interval = renew_interval
        self.acquire_timeout = acquire_timeout
        self.label = label
        self.ttl_ms = max(1, int(ttl * 1000))

    def __repr__(self) -> str:
        return (
            f"LockParams(name={self.name!r}, ttl={self.ttl!r}, renew_interval={self.renew_interval!r}, "
            f"acquire_timeout={self.acquire_timeout!r}, label={self.label!r})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LockParams):
            return NotImplemented
        return all(getattr(self, k) == getattr(other, k) for k in LockParams.__slots__)

    def __hash__(self) -> int:
        return hash((self.name, self.ttl, self.renew_interval, self.acquire_timeout, self.label))

    @staticmethod
    def make(
        name: str,
        ttl: float,
        renew: bool | float,
        acquire_timeout: float,
        label: str | None,
    ) -> LockParams:
        check_name(name)
        # Everything but the name is usually the same for every lock of a program: validated once.
        # Keys carry the types, so renew=True and renew=1 (a 1 s interval) stay apart.
        key = (type(ttl), ttl, type(renew), renew, type(acquire_timeout), acquire_timeout, label)
        try:
            settings = _settings.get(key)
        except TypeError:  # an unhashable argument: validation below says what is wrong with it
            settings = None
        if settings is None:
            settings = _validate(ttl, renew, acquire_timeout, label)
            if len(_settings) < 256:
                _settings[key] = settings
        if not label:
            return LockParams(name, settings[0], settings[1], settings[2], default_label())
        return LockParams(name, *settings)


_settings: dict[tuple[object, ...], tuple[float, float | None, float, str]] = {}


def _validate(
    ttl: float, renew: bool | float, acquire_timeout: float, label: str | None
) -> tuple[float, float | None, float, str]:
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
    # The default label (hostname:pid) is not cached with the settings: a forked child has its own pid.
    return ttl, interval, float(acquire_timeout), check_label(label) if label else label  # type: ignore[return-value]


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
