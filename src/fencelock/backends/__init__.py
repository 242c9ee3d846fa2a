"""Backends: one contract (``base``), one package each, and this registry, the only list of them.

``REGISTRY`` says, for every backend: its URL schemes, where its blocking and asyncio classes live
(imported only when used, so an optional client library is needed only by those who use it), which
client objects of the user's it accepts as is, and which extra installs its library. Everything
that needs to know the backends reads it: ``open_backend`` / ``open_async_backend``, the lazy
exports of ``fencelock`` and ``fencelock.aio`` (in their ``__all__`` only when no extra is needed,
so that ``import *`` works on the base install), the "unsupported URL" message, the CLI's help.

A new backend: a package under ``fencelock/backends/``, one ``BackendSpec`` below, and a test
server fixture put in the suites with ``tests/servers.py``'s ``register`` (see docs/architecture.md,
"Adding a backend").
"""

from __future__ import annotations

import importlib
import re
import sys
from dataclasses import dataclass
from typing import Any

from .._errors import ConfigurationError
from .base import AsyncBackend, Backend, CapsLease, WatchesLoss

__all__ = [
    "REGISTRY",
    "Abilities",
    "BackendSpec",
    "abilities",
    "open_async_backend",
    "open_backend",
    "safe_url",
    "url_help",
]


@dataclass(frozen=True)
class BackendSpec:
    """One backend, as the rest of fencelock needs to know it."""

    name: str
    """Short name, as in ``Backend.name``: ``redis``."""
    title: str
    """How people write it: ``Redis``."""
    schemes: tuple[str, ...]
    """URL schemes, without ``://``."""
    url_example: str
    """One line for messages and ``--help``."""
    sync: str
    """``module:Class`` of the blocking backend."""
    async_: str
    """``module:Class`` of the asyncio backend."""
    export: str
    """The name both classes are exported under (``fencelock.X`` and ``fencelock.aio.X``)."""
    clients: tuple[tuple[str, str, str], ...] = ()
    """A user's own client objects taken as is: (module, class, ``sync`` / ``async`` / ``both``)."""
    extra: str | None = None
    """The pip extra that installs the client library, when it is optional."""
    requires: tuple[str, ...] = ()
    """Modules the backend imports (to name the extra when one is missing)."""

    def load(self, asyncio: bool) -> Any:
        """The backend class, imported now; ``ConfigurationError`` naming the extra when its client
        library is not installed. Found once per process (a lock is made per name)."""
        cls = _LOADED.get((self.name, asyncio))
        if cls is None:
            cls = _LOADED[(self.name, asyncio)] = self._import(asyncio)
        return cls

    def _import(self, asyncio: bool) -> Any:
        module_name, _, attr = (self.async_ if asyncio else self.sync).partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            missing = getattr(err, "name", None) or ""
            if self.extra is not None and any(missing == r or missing.startswith(r + ".") for r in self.requires):
                raise ConfigurationError(
                    f"the {self.title} backend needs the {missing!r} package: pip install 'fencelock[{self.extra}]'"
                ) from err
            raise
        return getattr(module, attr)

    def recognizes(self, obj: Any, asyncio: bool) -> bool | None:
        """True if ``obj`` is a client of ours for that API, False if it is one for the other API,
        None if it is not ours at all. Only looks at modules already imported: an object cannot be
        an instance of a class whose module was never loaded."""
        verdict: bool | None = None
        for module_name, cls_name, flavor in self.clients:
            module = sys.modules.get(module_name)
            cls = getattr(module, cls_name, None) if module is not None else None
            if cls is None or not isinstance(obj, cls):
                continue
            if flavor == "both" or (flavor == "async") == asyncio:
                return True
            verdict = False
        return verdict


_LOADED: dict[tuple[str, bool], Any] = {}

REGISTRY: tuple[BackendSpec, ...] = (
    BackendSpec(
        name="redis",
        title="Redis",
        schemes=("redis", "rediss", "unix"),
        url_example="redis://host:6379, rediss://host:6380 (TLS), unix:///path/to/redis.sock",
        sync="fencelock.backends.redis._sync:RedisBackend",
        async_="fencelock.backends.redis._async:AsyncRedisBackend",
        export="RedisBackend",
        clients=(
            ("redis.client", "Redis", "sync"),
            ("redis.cluster", "RedisCluster", "sync"),
            ("redis.asyncio.client", "Redis", "async"),
            ("redis.asyncio.cluster", "RedisCluster", "async"),
        ),
    ),
    BackendSpec(
        name="zookeeper",
        title="ZooKeeper",
        schemes=("zk", "zookeeper"),
        url_example="zk://host:2181[,host:2181]/chroot",
        sync="fencelock.backends.zookeeper.backend:ZooKeeperBackend",
        async_="fencelock.backends.zookeeper.backend:AsyncZooKeeperBackend",
        export="ZooKeeperBackend",
        clients=(("kazoo.client", "KazooClient", "both"),),
        extra="zookeeper",
        requires=("kazoo",),
    ),
    BackendSpec(
        name="sqlite",
        title="SQLite",
        schemes=("sqlite",),
        url_example="sqlite:///path/to/locks.db (one host)",
        sync="fencelock.backends.sqlite:SqliteBackend",
        async_="fencelock.backends.sqlite:AsyncSqliteBackend",
        export="SqliteBackend",
    ),
    BackendSpec(
        name="postgres",
        title="PostgreSQL",
        schemes=("postgresql", "postgres"),
        url_example="postgresql://user:pass@host:5432/db?schema=fencelock",
        sync="fencelock.backends.postgres._sync:PostgresBackend",
        async_="fencelock.backends.postgres._async:AsyncPostgresBackend",
        export="PostgresBackend",
        clients=(
            ("psycopg", "Connection", "sync"),
            ("psycopg", "AsyncConnection", "async"),
            ("psycopg_pool", "ConnectionPool", "sync"),
            ("psycopg_pool", "AsyncConnectionPool", "async"),
        ),
        extra="postgres",
        requires=("psycopg", "psycopg_pool"),
    ),
)

_BY_SCHEME = {scheme: spec for spec in REGISTRY for scheme in spec.schemes}


def url_help() -> str:
    """The accepted lock URLs, one backend a line (for messages and ``--help``)."""
    return "; ".join(f"{spec.title}: {spec.url_example}" for spec in REGISTRY)


_SECRET_OPTION = re.compile(r"(^|&)([^=&]*pass[^=&]*)=[^&]*", re.IGNORECASE)


def safe_url(url: str) -> str:
    """``url`` as it may be shown to a user or written to a log: scheme, user, host, port, path and
    options kept, every password replaced by ``***`` (``mysql://admin:***@db/locks``): in the
    userinfo, and in options such as ``?password=`` or ``ssl_password=``.

    Works on the raw text rather than through ``urlsplit``, so that it also masks URLs that do not
    parse (a bad port, a password with a ``/`` in it): when in doubt it hides more, never less.
    The userinfo is everything up to the last ``@`` before the options."""
    if not isinstance(url, str):
        return f"<{type(url).__name__}>"
    scheme, sep, rest = url.partition("://")
    if not sep:  # a plain path (the demo's --db accepts one)
        return url
    before_query, qmark, query = rest.partition("?")
    if "@" in before_query:
        userinfo, _, hostpart = before_query.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        before_query = f"{user}:***@{hostpart}" if colon else f"{userinfo}@{hostpart}"
    if qmark:
        query = _SECRET_OPTION.sub(lambda m: f"{m.group(1)}{m.group(2)}=***", query)
    return f"{scheme}://{before_query}{qmark}{query}"


def _spec_for_url(url: str) -> BackendSpec:
    spec = _URL_SPECS.get(url)
    if spec is None:
        spec = _find_spec(url)
        if len(_URL_SPECS) < 1024:
            _URL_SPECS[url] = spec
    return spec


_URL_SPECS: dict[str, BackendSpec] = {}


def _find_spec(url: str) -> BackendSpec:
    scheme, sep, _ = url.partition("://")
    spec = _BY_SCHEME.get(scheme.lower()) if sep else None
    if spec is None:
        raise ConfigurationError(f"unsupported lock URL {safe_url(url)!r}: use {url_help()}")
    return spec


def _open(spec_or_obj: Any, asyncio: bool) -> tuple[Any, bool]:
    api = "fencelock.aio.Lock" if asyncio else "fencelock.Lock"
    other = "fencelock.Lock" if asyncio else "fencelock.aio.Lock"
    if isinstance(spec_or_obj, str):
        spec = _spec_for_url(spec_or_obj)
        return spec.load(asyncio).from_url(spec_or_obj), True
    known = _KNOWN_CLIENTS.get((type(spec_or_obj), asyncio))
    if known is not None:
        return known(spec_or_obj), False
    for spec in REGISTRY:
        verdict = spec.recognizes(spec_or_obj, asyncio)
        if verdict is True:
            cls = spec.load(asyncio)
            # A backend may share one instance among the locks given the same client (for_client)
            make = getattr(cls, "for_client", cls)
            _KNOWN_CLIENTS[(type(spec_or_obj), asyncio)] = make
            return make(spec_or_obj), False
        if verdict is False:
            kind = "a blocking" if asyncio else "an asyncio"
            raise ConfigurationError(
                f"this is {kind} {spec.title} client ({type(spec_or_obj).__name__}); use {other} with it, "
                f"or pass {api} the {'asyncio' if asyncio else 'blocking'} client"
            )
    protocol = AsyncBackend if asyncio else Backend
    if isinstance(spec_or_obj, protocol):
        return spec_or_obj, False
    wrong = "sync" if asyncio else "async"
    clients = ", ".join(f"{m.split('.')[0]}'s {c}" for spec in REGISTRY for m, c, f in spec.clients if f != wrong)
    raise ConfigurationError(
        f"cannot use {type(spec_or_obj).__name__} as {'an asyncio' if asyncio else 'a'} lock backend: pass a URL "
        f"({url_help()}), a client of yours ({clients}), or a fencelock {'asyncio ' if asyncio else ''}backend"
    )


_KNOWN_CLIENTS: dict[tuple[type, bool], Any] = {}
"""Client classes already recognized, and what makes their backend: the ``isinstance`` walk over
every registered client class cost microseconds a lock."""


def open_backend(spec: Any) -> tuple[Backend, bool]:
    """Blocking backend for ``spec`` (a URL, a user's client, or a backend); the bool says whether
    fencelock owns (and closes) it."""
    return _open(spec, asyncio=False)


def open_async_backend(spec: Any) -> tuple[AsyncBackend, bool]:
    """asyncio backend for ``spec``; the bool says whether fencelock owns (and closes) it."""
    return _open(spec, asyncio=True)


@dataclass(frozen=True, slots=True)
class Abilities:
    """Which optional abilities (``base``'s small protocols) a backend has."""

    watches_loss: bool
    caps_lease: bool


_ABILITIES: dict[type, Abilities] = {}


def abilities(backend: object) -> Abilities:
    """The optional abilities of ``backend``, found once per backend class (an ``isinstance`` on a
    runtime protocol costs microseconds; a lock is made per name). A class whose instances differ
    (``_dynamic_abilities``, e.g. the offloading adapter) is asked every time."""
    cls = type(backend)
    found = _ABILITIES.get(cls)
    if found is None:
        found = Abilities(isinstance(backend, WatchesLoss), isinstance(backend, CapsLease))
        if not getattr(cls, "_dynamic_abilities", False):
            _ABILITIES[cls] = found
    return found
