"""redis-py's exceptions translated into fencelock's error tree, in one place."""

from __future__ import annotations

from typing import Any, NoReturn

from ..._errors import AuthenticationFailed, BackendError, BackendRejected, BackendUnavailable

__all__ = ["map_errors", "raise_translated", "text"]


def text(value: Any) -> str:
    """Redis replies as str whether the user's client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class map_errors:  # used like a function: ``with map_errors("acquire"):``
    """Translate redis-py's exceptions into fencelock's tree, in one place.

    A class rather than ``@contextmanager``: it wraps every round trip, and a generator-based
    context manager costs a few microseconds more each time.
    """

    __slots__ = ("what",)

    def __init__(self, what: str) -> None:
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, err: BaseException | None, tb: object) -> None:
        if err is None or not isinstance(err, Exception) or isinstance(err, BackendError):
            return
        translated = _translate(err, self.what)
        if translated is not None:
            raise translated from err


def raise_translated(err: Exception, what: str) -> NoReturn:
    """Raise ``err`` as fencelock's error (``map_errors`` for an ``except`` clause: the hot path's
    calls are a plain ``try``, which costs nothing until something is raised)."""
    if isinstance(err, BackendError):
        raise err
    translated = _translate(err, what)
    if translated is None:
        raise err
    raise translated from err


_NEEDS_PASSWORD = (
    "; this server needs a password and the lock URL gives none: redis://[USER]:PASSWORD@host:port "
    "(or unix://:PASSWORD@/path.sock; fencelock run, status, release and elect read the URL from FENCELOCK_LOCK "
    "too, which keeps the password out of the process list)"
)


def _credentials(what: str, msg: str) -> AuthenticationFailed:
    hint = _NEEDS_PASSWORD if "NOAUTH" in msg or "already authenticated" in msg else ""
    return AuthenticationFailed(f"redis refused our credentials during {what}: {msg}{hint}")


def _translate(err: Exception, what: str) -> BackendError | None:
    from redis import exceptions as rex

    if isinstance(err, rex.AuthenticationError):
        return _credentials(what, str(err))
    if isinstance(err, rex.InvalidResponse):  # something answered, but not in RESP: a wrong port?
        return BackendUnavailable(
            f"redis unreachable during {what}: the server at that address is not a Redis server (it "
            f"answered {err}); check the lock URL's host and port"
        )
    if isinstance(err, (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, OSError)):
        return BackendUnavailable(f"redis unreachable during {what}: {err}")
    if isinstance(err, rex.ResponseError):
        msg = str(err)
        if "WRONGPASS" in msg or "NOAUTH" in msg or "invalid password" in msg.lower():
            return _credentials(what, msg)
        # A command refused inside a script reads "The user executing the script can't run this
        # command..." (Redis 7.0) rather than NOPERM: the same missing ACL, so the same hint.
        acl = "user executing the script can't" in msg or "No permissions to access" in msg
        if "NOPERM" in msg or "READONLY" in msg or acl or isinstance(err, rex.NoPermissionError):
            return BackendRejected(
                f"redis refused {what}: {msg}; the user needs EVALSHA, EVAL and SCRIPT LOAD plus BLPOP "
                "on the lock's keys, and the commands the scripts call (see README: Redis ACL)"
            )
        return BackendRejected(f"redis refused {what}: {msg}")
    if isinstance(err, rex.RedisError):
        return BackendRejected(f"redis error during {what}: {err}")
    return None
