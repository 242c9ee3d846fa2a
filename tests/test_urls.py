"""Lock URLs: a typo is a ConfigurationError when the Lock is made (blocking and asyncio), naming
the bad part and what is accepted; a URL shown to a user keeps its scheme and host and hides only
the password. No server is needed: all of this happens before any I/O."""

from __future__ import annotations

import pytest

import fencelock
from fencelock import aio
from fencelock.backends import safe_url

# -- showing a URL --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://admin:secret@db/locks", "mysql://admin:***@db/locks"),
        ("postgresql://user@/db?host=/tmp/pg", "postgresql://user@/db?host=/tmp/pg"),
        ("postgresql://u:pw@127.0.0.1:5432/demo?sslmode=require", "postgresql://u:***@127.0.0.1:5432/demo?sslmode=require"),
        ("postgresql://u@h/db?password=hunter2&application_name=x", "postgresql://u@h/db?password=***&application_name=x"),
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://:***@127.0.0.1:6379/0"),
        ("unix://:hunter2@/tmp/r.sock", "unix://:***@/tmp/r.sock"),
        ("rediss://app:p@ss@host:6380?ssl_password=k3y", "rediss://app:***@host:6380?ssl_password=***"),
        ("zk://alice:s3cret@h1:2181,h2:2181/chroot", "zk://alice:***@h1:2181,h2:2181/chroot"),
        ("sqlite:////var/lib/locks.db", "sqlite:////var/lib/locks.db"),
        ("/plain/path/demo.db", "/plain/path/demo.db"),
        ("redis://host:6379", "redis://host:6379"),
    ],
)
def test_safe_url_keeps_scheme_host_and_hides_only_the_password(url: str, shown: str) -> None:
    assert safe_url(url) == shown


@pytest.mark.parametrize(
    "url",
    ["mongodb://user:hunter2@/db?host=/var/run/mongo", "mysql://admin:hunter2@db/locks", "ftp://db/x"],
)
def test_an_unsupported_lock_url_is_shown_with_its_scheme_and_host(url: str) -> None:
    with pytest.raises(fencelock.ConfigurationError) as info:
        fencelock.Lock("x", url)
    message = str(info.value)
    assert safe_url(url) in message, message
    assert "hunter2" not in message
    assert "redis://" in message  # what would work


# -- Redis URLs -----------------------------------------------------------------------------------

BAD_REDIS = {
    "redis://127.0.0.1:6379?prefx=app:": ("prefx", "prefix"),
    "redis://127.0.0.1:6379?socket_timout=1": ("socket_timout", "socket_timeout"),
    "redis://127.0.0.1:6379?timeout=5": ("timeout", "socket_timeout"),
    "redis://host:notaport": ("port", "65535"),
    "redis://host:99999": ("port", "65535"),
    "redis://host:0": ("port", "65535"),
    "redis://host/x": ("db", "integer"),
    "redis://host/-1": ("db", "integer"),
    "redis://host?db=two": ("db", "integer"),
    "redis://host?wait_replicas=x": ("wait_replicas", "integer"),
    "redis://host?wait_replicas=-1": ("wait_replicas", "integer"),
    "redis://host?wait_replicas=1&wait_timeout=soon": ("wait_timeout", "seconds"),
    "redis://host?socket_timeout=abc": ("socket_timeout", "number"),
    "redis://host?max_connections=many": ("max_connections", "integer"),
    "redis://host?prefix=a{b}": ("prefix", "brace"),
    "redis://host?ssl_cert_reqs=none": ("ssl_cert_reqs", "rediss://"),
    "unix://": ("path", "unix:///"),
}


@pytest.mark.parametrize(("url", "words"), list(BAD_REDIS.items()), ids=list(BAD_REDIS))
def test_a_bad_redis_url_is_a_configuration_error_when_the_lock_is_made(url: str, words: tuple[str, str]) -> None:
    with pytest.raises(fencelock.ConfigurationError) as info:
        fencelock.Lock("x", url)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(("url", "words"), list(BAD_REDIS.items()), ids=list(BAD_REDIS))
def test_a_bad_redis_url_is_a_configuration_error_with_asyncio_too(url: str, words: tuple[str, str]) -> None:
    with pytest.raises(fencelock.ConfigurationError) as info:
        aio.Lock("x", url)
    assert words[0] in str(info.value)


def test_an_unknown_option_lists_the_accepted_ones_and_never_the_password() -> None:
    with pytest.raises(fencelock.ConfigurationError) as info:
        fencelock.Lock("x", "redis://:hunter2@127.0.0.1:6379?prefx=app:")
    message = str(info.value)
    assert "hunter2" not in message
    for accepted in ("prefix", "wait_replicas", "wait_timeout", "socket_timeout", "db", "client_name"):
        assert accepted in message, message


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379",
        "redis://127.0.0.1:6379/2",
        "redis://127.0.0.1:6379/",
        "redis://127.0.0.1?db=3&socket_timeout=1&socket_connect_timeout=0.5",
        "redis://u:pw@127.0.0.1:6379?prefix=app:&wait_replicas=1&wait_timeout=0.5",
        "redis://127.0.0.1?client_name=ingest&health_check_interval=10&protocol=3&max_connections=20",
        "redis://127.0.0.1?socket_keepalive=true&retry_on_timeout=false",
        "rediss://127.0.0.1:6380?ssl_cert_reqs=none&ssl_ca_certs=/etc/ca.pem&ssl_check_hostname=false",
        "unix:///tmp/redis.sock?db=1",
        "unix://:pw@/tmp/redis.sock",
    ],
)
def test_good_redis_urls_are_accepted_without_io(url: str) -> None:
    for make in (fencelock.Lock, aio.Lock):
        lock = make("x", url)
        assert lock.backend.name == "redis"


def test_url_options_still_reach_the_client() -> None:
    lock = fencelock.Lock("x", "redis://127.0.0.1:6390/4?socket_timeout=1.5&client_name=ingest&prefix=app:")
    kwargs = lock.backend.client.connection_pool.connection_kwargs  # type: ignore[attr-defined]
    assert kwargs["db"] == 4 and kwargs["socket_timeout"] == 1.5 and kwargs["client_name"] == "ingest"
    assert kwargs["port"] == 6390
    assert lock.backend.prefix == "app:"  # type: ignore[attr-defined]
    lock.close()


# -- ZooKeeper and SQLite URLs --------------------------------------------------------------------


@pytest.mark.parametrize("url", ["zk://h:99999", "zk://h:0", "zk://h1:2181,h2:70000/chroot"])
def test_a_zookeeper_port_out_of_range_is_a_configuration_error(url: str) -> None:
    pytest.importorskip("kazoo")
    with pytest.raises(fencelock.ConfigurationError, match="65535"):
        fencelock.Lock("x", url)


@pytest.mark.parametrize("url", ["sqlite:///x.db?busy_timeout=soon", "sqlite:///x.db?bogus=1", "sqlite://"])
def test_bad_sqlite_urls_are_configuration_errors(url: str) -> None:
    with pytest.raises(fencelock.ConfigurationError):
        fencelock.Lock("x", url)


# -- what redis-py would only refuse at the first connection, or with its own ValueError ----------

BAD_REDIS_VALUES = {
    "redis://127.0.0.1:6379?max_connections=-1": "max_connections",
    "redis://127.0.0.1:6379?protocol=7": "protocol",
    "rediss://127.0.0.1:6380?ssl_cert_reqs=bogus": "ssl_cert_reqs",
}


@pytest.mark.parametrize(("url", "word"), list(BAD_REDIS_VALUES.items()), ids=list(BAD_REDIS_VALUES))
def test_a_bad_redis_option_value_is_a_configuration_error_when_the_lock_is_made(url: str, word: str) -> None:
    """Not redis-py's plain ValueError at construction, nor BackendUnavailable/BackendRejected (exit
    69/77 in the CLI, "unreachable") at the first acquire: the value is wrong, say so at once."""
    for make in (fencelock.Lock, aio.Lock):
        with pytest.raises(fencelock.ConfigurationError) as info:
            make("x", url)
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize("url", ["REDIS://127.0.0.1:6379", "Redis://127.0.0.1:6379/1", "UNIX:///tmp/r.sock",
                                 "RedisS://127.0.0.1:6380"])
def test_a_redis_url_scheme_is_case_insensitive(url: str) -> None:
    """RFC 3986 schemes are case-insensitive, and the registry already sends REDIS:// to the Redis
    backend: it must not then fail with redis-py's raw ValueError (a traceback in the CLI)."""
    for make in (fencelock.Lock, aio.Lock):
        lock = make("x", url)
        assert lock.backend.name == "redis"


# -- PostgreSQL URLs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql:///db?host=/run/postgresql", {"dbname": "db", "host": "/run/postgresql"}),
        ("postgresql://u@/db?host=/tmp/s", {"user": "u", "dbname": "db", "host": "/tmp/s"}),
        ("postgresql://", {}),
        ("postgresql://u:pw@h:5433/db?sslmode=disable&schema=locks", {"user": "u", "password": "pw", "host": "h",
                                                                       "port": "5433", "dbname": "db"}),
    ],
)
def test_a_postgres_url_reaches_libpq_as_written(url: str, expected: dict[str, str]) -> None:
    """libpq's own URL forms, the unix-socket one with no host (``postgresql:///db?host=/dir``)
    included: rebuilding them must not drop the ``//`` (``postgresql:/db?host=...`` is no URL to
    libpq: "invalid connection option")."""
    pytest.importorskip("psycopg")
    from psycopg.conninfo import conninfo_to_dict

    from fencelock.backends.postgres.urls import parse_postgres_url

    parsed = conninfo_to_dict(parse_postgres_url(url).conninfo)
    assert parsed.pop("connect_timeout") == "2"
    for key, value in expected.items():
        assert parsed.get(key) == value, parsed


@pytest.mark.parametrize(
    ("url", "word"),
    [
        ("postgresql://u@127.0.0.1/db?foo=1", "foo"),
        ("postgresql://u@127.0.0.1/db?shema=locks", "shema"),
        ("postgresql://u@127.0.0.1:notaport/db", "port"),
        ("postgresql://u@127.0.0.1:99999/db", "port"),
    ],
)
def test_a_bad_postgres_url_is_a_configuration_error_when_the_lock_is_made(url: str, word: str) -> None:
    """An unknown option or a bad port is the user's typo: ConfigurationError (CLI exit 64) naming
    it, when the lock is made, not BackendRejected/BackendUnavailable at the first call."""
    pytest.importorskip("psycopg")
    for make in (fencelock.Lock, aio.Lock):
        with pytest.raises(fencelock.ConfigurationError) as info:
            make("x", url)
        assert word in str(info.value), str(info.value)
