"""fencelock: a distributed lock with leases and monotonic fencing tokens.

    import fencelock

    lock = fencelock.Lock("file:2024-01.tsv", "redis://localhost:6379", ttl=30)
    with lock as lease:              # waits at most 10 s by default, then LockTimeout
        lease.ensure_held()          # raises LeaseLost if the lease is gone
        store.write(rows, fence=lease.fence)   # storage refuses a lower fence (fencelock.fencing)

asyncio: ``fencelock.aio.Lock`` has the same API with ``await`` / ``async with``.
"""

from ._core.params import DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_TTL
from ._errors import (
    AlreadyHeld,
    AuthenticationFailed,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    ConfigurationError,
    FenceLockError,
    LeaseError,
    LeaseLost,
    LimitMismatch,
    LockTimeout,
    NotHeld,
    ReplicationUnconfirmed,
    StaleFence,
)
from ._sync.lock import Lease, Lock
from ._sync.primitives import Election, Leader, ReadWriteLock, Semaphore
from .backends import REGISTRY
from .backends.base import Attempt, LockInfo

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # Backend classes (RedisBackend, ZooKeeperBackend...) come from the registry, imported on
    # first use: some need an optional client library. Typed imports: fencelock.backends.<name>.
    for spec in REGISTRY:
        if spec.export == name:
            return spec.load(asyncio=False)
    raise AttributeError(f"module 'fencelock' has no attribute {name!r}")


__all__ = [
    "DEFAULT_ACQUIRE_TIMEOUT",
    "DEFAULT_TTL",
    "AlreadyHeld",
    "Attempt",
    "AuthenticationFailed",
    "BackendError",
    "BackendRejected",
    "BackendUnavailable",
    "ConfigurationError",
    "Election",
    "FenceLockError",
    "Lease",
    "LeaseError",
    "LeaseLost",
    "Leader",
    "LimitMismatch",
    "Lock",
    "LockInfo",
    "LockTimeout",
    "NotHeld",
    "ReadWriteLock",
    "ReplicationUnconfirmed",
    "Semaphore",
    "StaleFence",
    "__version__",
    # `from fencelock import *` imports what is in __all__: only the backends without an optional
    # client library (the others are imported by name, with a message naming their extra)
    *(spec.export for spec in REGISTRY if spec.extra is None),
]
