"""redis:// URLs: fencelock's own options split from redis-py's, everything validated before any I/O,
with a message naming the bad option and the accepted ones."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from ..._errors import ConfigurationError
from .keys import check_prefix

__all__ = ["DEFAULT_WAIT_TIMEOUT", "check_wait_replicas", "client_from_url", "parse_redis_url"]


_OUR_PARAMS = {"prefix", "wait_replicas", "wait_timeout"}

DEFAULT_WAIT_TIMEOUT = 1.0
"""Seconds a grant waits for ``wait_replicas`` acknowledgements (``WAIT``) when none is given."""


def check_wait_replicas(client: Any, replicas: Any, timeout: Any) -> tuple[int, int]:
    """Validate ``wait_replicas`` / ``wait_timeout``; returns (replicas, timeout in ms, at least 1:
    ``WAIT n 0`` would block forever)."""
    if isinstance(replicas, bool) or not isinstance(replicas, int) or replicas < 0:
        raise ConfigurationError(f"wait_replicas must be an integer >= 0, got {replicas!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < 1e6:
        raise ConfigurationError(
            f"wait_timeout must be a positive, finite number of seconds, got {timeout!r} (every wait is bounded)"
        )
    if replicas and "Cluster" in type(client).__name__:
        raise ConfigurationError(
            "wait_replicas is not supported with a Redis Cluster client (WAIT must run on the connection "
            "of the node that took the write)"
        )
    return replicas, max(1, int(timeout * 1000))


# Options that are plain strings for redis-py (no parser in its URL_QUERY_ARGUMENT_PARSERS) but
# that users do put in URLs; listed in our error messages next to the typed ones.
_STRING_OPTIONS = ("client_name", "username", "password", "ssl_ca_certs", "ssl_ca_path", "ssl_certfile",
                   "ssl_keyfile", "ssl_password", "ssl_cert_reqs", "ssl_ciphers")


def _init_params(cls: type) -> set[str]:
    """Every keyword argument the ``__init__`` methods along ``cls``'s MRO declare."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - a builtin __init__
            continue
        names.update(p.name for p in params if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    return names


_accepted_cache: dict[str, frozenset[str]] = {}


def _accepted_options(scheme: str) -> frozenset[str]:
    """The URL options redis-py's connection pool and connection class for ``scheme`` accept, in
    both the blocking and the asyncio client (one URL may go to either). redis-py passes an
    unknown option on as a keyword argument and fails only at the first connection (a
    ``TypeError``), so fencelock checks the names when the lock is made."""
    if scheme not in _accepted_cache:
        import redis.asyncio.connection as aconn
        import redis.connection as conn

        kind = {"redis": "Connection", "rediss": "SSLConnection", "unix": "UnixDomainSocketConnection"}[scheme]
        accepted = None
        for module in (conn, aconn):
            names = _init_params(getattr(module, kind)) | _init_params(module.ConnectionPool)
            accepted = names if accepted is None else accepted & names
        assert accepted is not None
        # set from the URL itself, never as options
        accepted -= {"host", "port", "path", "connection_class"}
        _accepted_cache[scheme] = frozenset(accepted)
    return _accepted_cache[scheme]


def _listed(scheme: str) -> str:
    """The options worth naming in an error message (not redis-py's internal keyword arguments)."""
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    useful = (set(URL_QUERY_ARGUMENT_PARSERS) | set(_STRING_OPTIONS)) & _accepted_options(scheme)
    return ", ".join(sorted(_OUR_PARAMS) + sorted(useful))


def _kind(parser: Any) -> str:
    return {int: "an integer", float: "a number"}.get(parser, "true or false" if "bool" in getattr(
        parser, "__name__", "") else "a valid value")


def _option_error(scheme: str, name: str) -> ConfigurationError:
    hint = ""
    if scheme == "redis" and name.startswith("ssl_") and name in _accepted_options("rediss"):
        hint = f" ({name} is a TLS option: use a rediss:// URL)"
    return ConfigurationError(
        f"unknown option {name!r} in {scheme}:// lock URL{hint}; accepted options: {_listed(scheme)}"
    )


_CERT_REQS = ("none", "optional", "required")


def client_from_url(redis_api: Any, url: str, plain: str, kwargs: dict[str, Any]) -> Any:
    """``redis_api.Redis.from_url(plain, **kwargs)``, and one connection object made (no I/O) so that
    what redis-py checks only when it connects (``protocol``, TLS flags...) is checked now: any
    refusal is a ``ConfigurationError`` naming the URL (password hidden), never a ``ValueError`` at
    construction or a "server unreachable" at the first acquire."""
    from redis.exceptions import RedisError

    from .. import safe_url

    try:
        client = redis_api.Redis.from_url(plain, **kwargs)
        pool = client.connection_pool
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, RedisError) as err:
        raise ConfigurationError(f"bad Redis lock URL {safe_url(url)}: {err}") from None
    return client


def parse_redis_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``redis://...?prefix=app:`` into the URL redis-py understands and fencelock's own options.

    Everything redis-py would only complain about at the first connection (an unknown option, a
    port that is not a number, a db that is not an integer) raises ``ConfigurationError`` here,
    naming the bad part and what is accepted; so do bad values of fencelock's own options."""
    parts = urlsplit(url)
    scheme = parts.scheme  # lower-cased by urlsplit: schemes are case-insensitive (RFC 3986)
    if scheme not in ("redis", "rediss", "unix"):
        raise ConfigurationError(f"not a Redis URL: {url!r} (use redis://, rediss:// or unix://)")
    if scheme == "unix":
        if not parts.path or parts.path == "/":
            raise ConfigurationError("unix:// lock URL needs the socket's path: unix:///path/to/redis.sock")
    else:
        try:
            port = parts.port
        except ValueError:
            port = -1
        if port is not None and not 1 <= port <= 65535:
            raise ConfigurationError(
                f"{scheme}:// lock URL has a bad port {parts.netloc.rpartition(':')[2]!r}: "
                "it must be a number from 1 to 65535 (redis://host:6379)"
            )
        db_path = parts.path.strip("/")
        if db_path and not db_path.isdigit():
            raise ConfigurationError(
                f"the path of a {scheme}:// lock URL is the database number (db): it must be an integer "
                f"like /0, got {parts.path!r}"
            )
    from redis.connection import URL_QUERY_ARGUMENT_PARSERS

    query = parse_qs(parts.query, keep_blank_values=True)
    accepted = _accepted_options(scheme)
    for name, values in query.items():
        if name in _OUR_PARAMS:
            continue
        if name not in accepted:
            raise _option_error(scheme, name)
        parser: Any = URL_QUERY_ARGUMENT_PARSERS.get(name)
        if parser is not None and values[-1] != "":
            try:
                parsed = parser(values[-1])
            except (TypeError, ValueError):
                raise ConfigurationError(
                    f"{scheme}:// lock URL option {name} must be {_kind(parser)}, got {values[-1]!r}"
                ) from None
            if name == "db" and parsed < 0:
                raise ConfigurationError(f"{scheme}:// lock URL option db must be an integer >= 0, got {values[-1]!r}")
            if name == "max_connections" and parsed < 0:
                raise ConfigurationError(
                    f"{scheme}:// lock URL option max_connections must be an integer >= 1 (0: no cap), "
                    f"got {values[-1]!r}"
                )
        if name == "ssl_cert_reqs" and values[-1].lower() not in _CERT_REQS:
            raise ConfigurationError(
                f"{scheme}:// lock URL option ssl_cert_reqs must be one of {', '.join(_CERT_REQS)}, got {values[-1]!r}"
            )
    ours = {k: v[-1] for k, v in query.items() if k in _OUR_PARAMS}
    if "prefix" in ours:
        check_prefix(ours["prefix"])
    replicas = ours.get("wait_replicas", "")
    if replicas and not replicas.isdigit():
        raise ConfigurationError(f"lock URL option wait_replicas must be an integer >= 0, got {replicas!r}")
    wait_timeout = ours.get("wait_timeout", "")
    if wait_timeout:
        try:
            seconds = float(wait_timeout)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds < 1e6:
            raise ConfigurationError(
                f"lock URL option wait_timeout must be a positive number of seconds, got {wait_timeout!r}"
            )
    theirs = [(k, x) for k, v in query.items() if k not in _OUR_PARAMS for x in v]
    base = url.split("?", 1)[0]  # urlunsplit would turn unix:///p into unix:/p
    base = scheme + base[len(scheme):]  # redis-py accepts only lower-case schemes
    return (base + "?" + urlencode(theirs) if theirs else base), ours
