"""kazoo's exceptions translated into fencelock's tree, in one place."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from ..._errors import AuthenticationFailed, BackendError, BackendRejected, BackendUnavailable

__all__ = ["map_errors"]


@contextlib.contextmanager
def map_errors(what: str) -> Iterator[None]:
    """Translate kazoo's exceptions raised inside the block; ``what`` names the operation."""
    from kazoo import exceptions as kex
    from kazoo.handlers.threading import KazooTimeoutError

    try:
        yield
    except BackendError:
        raise
    except kex.AuthFailedError as err:
        raise AuthenticationFailed(f"zookeeper refused our credentials during {what}") from err
    except (
        kex.ConnectionLoss,
        kex.SessionExpiredError,  # also ConnectionClosedError: the client was stopped
        kex.OperationTimeoutError,
        kex.ConnectionDropped,
        kex.SessionMovedError,
        KazooTimeoutError,
        asyncio.TimeoutError,
        OSError,
    ) as err:
        raise BackendUnavailable(f"zookeeper unreachable during {what}: {type(err).__name__} {err}".rstrip()) from err
    except kex.NoAuthError as err:
        raise BackendRejected(
            f"zookeeper refused {what}: no permission on the lock's nodes (ACL); the client needs "
            "CREATE, DELETE, READ and WRITE on the lock root"
        ) from err
    except kex.KazooException as err:
        raise BackendRejected(f"zookeeper refused {what}: {type(err).__name__} {err}".rstrip()) from err
