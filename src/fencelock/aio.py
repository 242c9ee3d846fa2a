"""asyncio API: the same names as ``fencelock``, awaited.

from fencelock import aio

lock = aio.Lock("job:nightly", "redis://localhost:6379", ttl=30, cancel_on_loss=True)
async with lock as lease:
    await do_work(fence=lease.fence)   # cancelled at its next await if the lease is lost
"""

from ._async.lock import AsyncLease as Lease
from ._async.lock import AsyncLock as Lock
from ._async.primitives import AsyncElection as Election
from ._async.primitives import AsyncReadWriteLock as ReadWriteLock
from ._async.primitives import AsyncSemaphore as Semaphore
from ._async.primitives import Leader
from .backends import REGISTRY

__all__ = [
    "Election",
    "Leader",
    "Lease",
    "Lock",
    "ReadWriteLock",
    "Semaphore",
    *(spec.export for spec in REGISTRY if spec.extra is None),  # import * needs no optional library
]


def __getattr__(name: str) -> object:
    # asyncio backend classes from the registry, imported on first use (see fencelock.__getattr__)
    for spec in REGISTRY:
        if spec.export == name:
            return spec.load(asyncio=True)
    raise AttributeError(f"module 'fencelock.aio' has no attribute {name!r}")
