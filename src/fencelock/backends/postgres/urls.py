"""postgresql:// URLs: fencelock's own options split from libpq's, checked before any I/O."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from ..._errors import ConfigurationError
from .schema import DEFAULT_SCHEMA, check_schema

__all__ = ["DEFAULT_CONNECT_TIMEOUT", "DEFAULT_REQUEST_TIMEOUT", "PgOptions", "check_timeout", "parse_postgres_url"]

DEFAULT_REQUEST_TIMEOUT = 2.0
"""Seconds one call may take before its connection is cut and it raises ``BackendUnavailable``."""
DEFAULT_CONNECT_TIMEOUT = 2
"""libpq's ``connect_timeout`` (whole seconds) when the URL gives none."""

_OURS = {"schema", "request_timeout", "listen", "durable"}
_BOOL = {"1": True, "true": True, "on": True, "yes": True, "0": False, "false": False, "off": False, "no": False}


@dataclass(frozen=True)
class PgOptions:
    """What a URL says beyond the libpq connection string."""

    conninfo: str
    schema: str = DEFAULT_SCHEMA
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    listen: bool = True
    durable: bool = False


def check_timeout(value: object, what: str = "request_timeout") -> float:
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not 0 < seconds < 3600:
        raise ConfigurationError(f"{what} must be a number of seconds between 0 and 3600, got {value!r}")
    return seconds


def _flag(name: str, value: str) -> bool:
    flag = _BOOL.get(value.lower())
    if flag is None:
        raise ConfigurationError(f"{name} must be on or off (1/0, true/false), got {value!r}")
    return flag


def _check_libpq(conninfo: str, url: str) -> None:
    """What libpq would refuse only when connecting (an unknown option, a port that is no number),
    refused now as ``ConfigurationError`` naming it: a typo is not "server unreachable". Needs psycopg
    (without it the backend says which extra to install before it gets here)."""
    try:
        from psycopg import ProgrammingError
        from psycopg.conninfo import conninfo_to_dict
    except ImportError:  # pragma: no cover - the backend checks for psycopg first
        return
    from .. import safe_url

    try:
        params = conninfo_to_dict(conninfo)
    except ProgrammingError as err:
        raise ConfigurationError(
            f"bad PostgreSQL lock URL {safe_url(url)}: {' '.join(str(err).split())}; fencelock's own options "
            f"are {', '.join(sorted(_OURS))}, the others go to libpq (sslmode, connect_timeout, host, ...)"
        ) from None
    for port in str(params.get("port", "")).split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigurationError(
                f"bad PostgreSQL lock URL {safe_url(url)}: port {port!r} must be a number from 1 to 65535"
            )


def parse_postgres_url(url: str) -> PgOptions:
    """``postgresql://[user[:password]@][host][:port]/dbname?[libpq options]&[ours]`` (also
    ``postgres://``; a unix socket directory as ``?host=/run/postgresql``). Ours: ``schema=`` (default
    ``fencelock``), ``request_timeout=`` seconds (default 2), ``listen=off`` (poll instead of
    LISTEN/NOTIFY: behind a pooler in transaction mode), ``durable=on`` (commit every lock change with
    the server's ``synchronous_commit``). The rest goes to libpq unchanged."""
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigurationError(f"not a PostgreSQL URL (postgresql://...): {parts.scheme}://...")
    ours: dict[str, str] = {}
    theirs: list[str] = []  # libpq's options exactly as written (libpq decodes them itself)
    for part in parts.query.split("&"):
        if not part:
            continue
        key = unquote(part.partition("=")[0])
        if key in _OURS:
            ours[key] = unquote(part.partition("=")[2])  # percent-decoding only: "+" is a plus sign
        else:
            theirs.append(part)
    if not any(unquote(p.partition("=")[0]) == "connect_timeout" for p in theirs):
        theirs.append(f"connect_timeout={DEFAULT_CONNECT_TIMEOUT}")
    # Not urlunsplit: it drops the "//" of an empty host (postgresql:///db?host=/run/postgresql, libpq's
    # unix-socket form), and "postgresql:/db?..." is no URL to libpq ("invalid connection option").
    conninfo = f"postgresql://{parts.netloc}{parts.path}?{'&'.join(theirs)}"
    if parts.fragment:
        conninfo += f"#{parts.fragment}"
    _check_libpq(conninfo, url)
    return PgOptions(
        conninfo=conninfo,
        schema=check_schema(ours.get("schema", DEFAULT_SCHEMA)),
        request_timeout=check_timeout(ours.get("request_timeout", DEFAULT_REQUEST_TIMEOUT)),
        listen=_flag("listen", ours["listen"]) if "listen" in ours else True,
        durable=_flag("durable", ours["durable"]) if "durable" in ours else False,
    )
