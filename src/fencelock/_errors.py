"""Every error fencelock raises, under one root.

    FenceLockError
     ├── ConfigurationError (also ValueError)   bad argument or URL; raised at once, before any I/O
     ├── LockTimeout                            the lock stayed busy for the whole acquire timeout
     ├── LeaseError
     │    ├── LeaseLost                         the lease expired, was taken over, or its session died
     │    ├── NotHeld                           release/extend of a lease that was already released
     │    └── AlreadyHeld                       acquiring again from the thread/task that holds it (not reentrant)
     ├── StaleFence                             storage refused a write: a higher fence was already accepted
     └── BackendError
          ├── BackendUnavailable                the server could not be reached within the bounded time
          ├── AuthenticationFailed              the server refused our credentials
          └── BackendRejected                   the server answered, but refused the command (ACL, read-only...)
               ├── ReplicationUnconfirmed       Redis granted, but too few replicas acknowledged (wait_replicas)
               └── LimitMismatch                the name is in use with another limit (or as another kind of lock)

Why one root: callers catch ``FenceLockError`` and know they caught only ours. Why no ``False`` for a
down server: ``False`` looks like contention, and a caller that retries on contention would spin
against a dead server forever. Every exception here keeps its arguments in ``args`` so it pickles
and crosses process boundaries (multiprocessing, concurrent.futures) intact.
"""

from __future__ import annotations

__all__ = [
    "AlreadyHeld",
    "AuthenticationFailed",
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "ConfigurationError",
    "FenceLockError",
    "LeaseError",
    "LeaseLost",
    "LimitMismatch",
    "LockTimeout",
    "NotHeld",
    "ReplicationUnconfirmed",
    "StaleFence",
]


class FenceLockError(Exception):
    """Root of every error raised by fencelock."""


class ConfigurationError(FenceLockError, ValueError):
    """A bad argument or URL. Raised before any network traffic, with what to do instead."""


class LockTimeout(FenceLockError, TimeoutError):
    """The lock stayed held by someone else for the whole acquire timeout."""

    def __init__(self, name: str, timeout: float) -> None:
        super().__init__(name, timeout)
        self.name = name
        self.timeout = timeout

    def __str__(self) -> str:
        return f"lock {self.name!r} was still held by another owner after waiting {self.timeout:g} s"


class LeaseError(FenceLockError):
    """A problem with a lease this process holds (or held)."""


class LeaseLost(LeaseError):
    """The lease is gone: it expired, another owner took the lock, or the backend session died.

    After this, writes guarded by the lease's fence may be rejected by the storage (that is the
    point of the fence); the holder must stop acting as the owner.
    """

    def __init__(self, name: str, fence: int, reason: str) -> None:
        super().__init__(name, fence, reason)
        self.name = name
        self.fence = fence
        self.reason = reason

    def __str__(self) -> str:
        return f"lease on {self.name!r} (fence {self.fence}) was lost: {self.reason}"


class NotHeld(LeaseError):
    """The lease was already released (or belongs to another process): nothing to release or extend."""


class AlreadyHeld(LeaseError):
    """This thread or task already holds the lock through ``with`` and asked for it again: fencelock
    locks are not reentrant (the acquire would wait for itself until its timeout)."""


class StaleFence(FenceLockError):
    """The storage refused a write because it already accepted a higher fence for the resource."""

    def __init__(self, resource: str, fence: int, current: int | None) -> None:
        super().__init__(resource, fence, current)
        self.resource = resource
        self.fence = fence
        self.current = current

    def __str__(self) -> str:
        return (
            f"write to {self.resource!r} with fence {self.fence} rejected: "
            f"the storage already accepted fence {self.current}"
        )


class BackendError(FenceLockError):
    """The lock backend failed (unreachable, refused our credentials or a command); the message names
    the backend and what to do."""


class BackendUnavailable(BackendError, ConnectionError):
    """The backend could not be reached (refused, timed out, connection dropped)."""


class AuthenticationFailed(BackendError):
    """The backend refused the credentials (wrong password, unknown user)."""


class BackendRejected(BackendError):
    """The backend answered but refused the command (missing ACL permission, read-only replica...)."""


class ReplicationUnconfirmed(BackendRejected):
    """The master granted the lock, but fewer replicas than asked acknowledged it in time: a failover
    now could lose the lock (and hand it to a second owner), so the grant is given up."""

    def __init__(self, name: str, acked: int, wanted: int, timeout: float) -> None:
        super().__init__(name, acked, wanted, timeout)
        self.name = name
        self.acked = acked
        self.wanted = wanted
        self.timeout = timeout

    def __str__(self) -> str:
        return (
            f"lock {self.name!r}: only {self.acked} of {self.wanted} replica(s) acknowledged the grant "
            f"within {self.timeout:g} s (WAIT); the lock was given up, since a failover could lose it"
        )


class LimitMismatch(BackendRejected):
    """The name is in use with another limit: a semaphore of ``limit`` permits where others use
    ``current``, or a mutex (limit 1) where others run a semaphore or a read-write lock on it. Names
    are not merged silently: give each kind of use its own name."""

    def __init__(self, name: str, limit: int, current: int) -> None:
        super().__init__(name, limit, current)
        self.name = name
        self.limit = limit
        self.current = current

    def __str__(self) -> str:
        return (
            f"{self.name!r} is in use with limit {_limit_text(self.current)}; this client asked for "
            f"{_limit_text(self.limit)}: every client of a name must use the same kind and limit"
        )


def _limit_text(limit: int) -> str:
    if limit >= 1 << 30:
        return "of a read-write lock"
    return "1 (a mutex)" if limit == 1 else f"{limit} (a semaphore)"
