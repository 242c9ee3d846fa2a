"""Security on real servers: TLS with certificates made here, Redis ACL users, key names that are
data (never code, never another lock's keys), and key prefixes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.crc import key_slot

import fencelock
import fencelock.backends.base
from fencelock._cli_ops import EXIT_UNAVAILABLE
from fencelock._core.params import new_token
from fencelock.backends.redis import RedisKeys
from fencelock.embedded import EmbeddedRedis
from srv_tls import DEBIAN_REDIS, Pki, TlsRedis, make_pki, private_dir, start_with_retries

WAIT = 60.0


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(pki: Pki) -> Iterator[TlsRedis]:
    directory = private_dir("tls")
    server = start_with_retries(lambda: TlsRedis(pki, directory))
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


# -- TLS ------------------------------------------------------------------------------------------


def test_tls_with_ca_client_cert_and_key_in_the_url(tls_server: TlsRedis, name: str) -> None:
    lock = fencelock.Lock(name, tls_server.url_with(), ttl=5)
    try:
        with lock as lease:
            assert lease.fence > 0
            info = lock.inspect()
            assert info is not None and info.fence == lease.fence
        assert lock.inspect() is None
    finally:
        lock.close()


def test_tls_with_the_users_own_client(tls_server: TlsRedis, pki: Pki, name: str) -> None:
    client = redis.Redis(
        host="127.0.0.1",
        port=tls_server.port,
        ssl=True,
        ssl_ca_certs=str(pki.ca),
        ssl_certfile=str(pki.client_cert),
        ssl_keyfile=str(pki.client_key),
        socket_timeout=10,
    )
    try:
        with fencelock.Lock(name, client, ttl=5) as lease:
            lease.extend()
            assert lease.held
        assert client.exists(RedisKeys("fencelock:", name).lock) == 0
    finally:
        client.close()


async def test_tls_with_the_asyncio_api(tls_server: TlsRedis, name: str) -> None:
    import fencelock.aio

    lock = fencelock.aio.Lock(name, tls_server.url_with(), ttl=5)
    try:
        async with lock as lease:
            assert lease.fence > 0
        wrong = fencelock.aio.Lock(name, tls_server.url_with(ca=tls_server.pki.other_ca), ttl=5)
        try:
            with pytest.raises(fencelock.BackendUnavailable, match="certificate verify failed"):
                await wrong.acquire(timeout=1)
        finally:
            await wrong.aclose()
    finally:
        await lock.aclose()


def test_tls_with_the_wrong_ca_fails_clearly(tls_server: TlsRedis, pki: Pki, name: str) -> None:
    lock = fencelock.Lock(name, tls_server.url_with(ca=pki.other_ca), ttl=5)
    try:
        with pytest.raises(fencelock.BackendUnavailable, match="certificate verify failed"):
            lock.acquire(timeout=1)
    finally:
        lock.close()


def test_tls_without_a_client_certificate_is_refused(tls_server: TlsRedis, name: str) -> None:
    lock = fencelock.Lock(name, tls_server.url_with(cert=False), ttl=5)
    try:
        with pytest.raises(fencelock.BackendUnavailable):
            lock.acquire(timeout=1)
    finally:
        lock.close()


def test_plain_tcp_is_not_served(tls_server: TlsRedis, name: str) -> None:
    # The TLS port refuses a plaintext client: an error, never a silent plaintext session.
    plain = fencelock.Lock(name, f"redis://127.0.0.1:{tls_server.port}", ttl=5)
    try:
        with pytest.raises(fencelock.BackendUnavailable):
            plain.acquire(timeout=1)
    finally:
        plain.close()


def test_cli_tls_options(tls_server: TlsRedis, pki: Pki, name: str) -> None:
    cli = [sys.executable, "-m", "fencelock.cli"]
    tls = ["--tls-ca", str(pki.ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    ok = subprocess.run(
        [*cli, "run", name, "--lock", tls_server.url, *tls, "--", "sh", "-c", 'test -n "$FENCELOCK_FENCE"'],
        capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    wrong = ["--tls-ca", str(pki.other_ca), "--tls-cert", str(pki.client_cert), "--tls-key", str(pki.client_key)]
    bad = subprocess.run(
        [*cli, "status", name, "--lock", tls_server.url, *wrong],
        capture_output=True, text=True, timeout=WAIT, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert bad.returncode == EXIT_UNAVAILABLE
    assert "certificate verify failed" in bad.stderr


# -- ACL ------------------------------------------------------------------------------------------

MINIMAL_COMMANDS = [
    "evalsha", "script|load",  # the scripts (redis-py sends EVALSHA, loads on NOSCRIPT)
    "blpop",  # waiting for a handoff
    "get", "set", "del", "exists", "time", "pttl", "pexpire",  # called by the scripts; GET also by status
    "zadd", "zrange", "zrem", "zcard", "hset", "hget", "hdel", "rpush",  # the waiter queue
]  # fmt: skip
"""The commands a fencelock user needs (docs/operating.md: Redis ACL). Commands a script calls are
checked against the caller's ACL too, so they are listed."""

KEY_PATTERN = "~fencelock:*"


def minimal_acl(without: str | None = None) -> list[str]:
    rules = ["on", ">fl-pass", "resetkeys", KEY_PATTERN, "resetchannels", "-@all"]
    return rules + [f"+{c}" for c in MINIMAL_COMMANDS if c != without]


@pytest.fixture(scope="module")
def acl_server() -> Iterator[EmbeddedRedis]:
    directory = private_dir("acl")
    server = EmbeddedRedis(DEBIAN_REDIS, directory=directory, password="admin-pass")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def user_client(server: EmbeddedRedis, user: str) -> redis.Redis:
    return redis.Redis(unix_socket_path=str(server.socket), username=user, password="fl-pass", socket_timeout=10)


def set_user(server: EmbeddedRedis, user: str, rules: list[str]) -> None:
    admin = server.client()
    try:
        admin.execute_command("ACL", "SETUSER", user, "reset", *rules)
        admin.script_flush()  # so the first EVALSHA misses and SCRIPT LOAD is exercised too
    finally:
        admin.close()


def full_scenario(server: EmbeddedRedis, user: str, name: str) -> tuple[list[int], list[BaseException]]:
    """acquire, inspect, extend, a waiter queued, handoff on release, claim, release.
    Returns the fences seen and every error raised (by the holder or the waiter)."""
    errors: list[BaseException] = []
    fences: list[int] = []
    holder_client, waiter_client = user_client(server, user), user_client(server, user)
    try:
        holder = fencelock.Lock(name, holder_client, ttl=10, renew=False)
        lease = holder.acquire(timeout=0)
        fences.append(lease.fence)
        info = holder.inspect()
        assert info is not None and info.fence == lease.fence
        lease.extend()

        def waiter() -> None:
            try:
                lock = fencelock.Lock(name, waiter_client, ttl=10, renew=False)
                with lock.acquire(timeout=10) as second:
                    fences.append(second.fence)
            except BaseException as err:
                errors.append(err)

        thread = threading.Thread(target=waiter)
        thread.start()
        end = time.monotonic() + WAIT
        while not errors:
            info = holder.inspect()
            if info is not None and info.waiters == 1:
                break
            assert time.monotonic() < end, "the waiter never queued"
            time.sleep(0.01)
        lease.release()
        thread.join(WAIT)
        assert not thread.is_alive()
    except fencelock.FenceLockError as err:
        errors.append(err)
    finally:
        holder_client.close()
        waiter_client.close()
    return fences, errors


def test_a_user_with_exactly_the_minimal_acl_can_do_everything(acl_server: EmbeddedRedis, name: str) -> None:
    set_user(acl_server, "fl-minimal", minimal_acl())
    fences, errors = full_scenario(acl_server, "fl-minimal", name)
    assert errors == []
    assert len(fences) == 2 and fences[1] > fences[0], "handoff to the waiter, with a higher fence"
    # The operator commands need nothing more: status (inspect + last fence) and force release.
    client = user_client(acl_server, "fl-minimal")
    try:
        lock = fencelock.Lock(name, client, ttl=10)
        lease = lock.acquire(timeout=0)
        assert lock.backend.last_fence(name) == lease.fence  # type: ignore[attr-defined]
        removed = lock.backend.force_release(name)  # type: ignore[attr-defined]
        assert removed is not None and removed.startswith(lease.token)
    finally:
        client.close()


def counted_scenario(server: EmbeddedRedis, user: str, name: str) -> list[BaseException]:
    """Counted leases at the backend level, every script of theirs: a read-write lock's writer,
    readers queued behind it and handed over to, extend, inspect, abandon, the limit binding, expired
    holders dropped, force release. Returns every error raised."""
    errors: list[BaseException] = []
    client = user_client(server, user)
    rw = fencelock.backends.base.RW_LIMIT
    try:
        backend = fencelock.RedisBackend(client)
        writer, readers = new_token(), [new_token() for _ in range(3)]
        assert backend.try_acquire(name, writer, 10_000, "w", False, rw, rw).fence is not None
        for r in readers:
            assert backend.try_acquire(name, r, 10_000, "r", True, rw, 1).fence is None
        assert backend.try_acquire(name, writer, 10_000, "w", True, rw, rw).fence is not None  # asked again
        assert backend.extend(name, writer, 10_000) is True
        info = backend.inspect(name)
        assert info is not None and info.limit == rw and info.waiters == 3
        backend.abandon(name, readers[2])
        assert backend.release(name, writer) is True
        assert all(backend.wait(name, r, 1.0) is not None for r in readers[:2]), "handed over"
        with pytest.raises(fencelock.LimitMismatch):
            backend.try_acquire(name, new_token(), 10_000, "m", False)
        short = new_token()
        assert backend.try_acquire(name, short, 50, "short", False, rw, 1).fence is not None
        time.sleep(0.1)
        assert backend.release(name, short) is False, "expired"
        assert backend.force_release(name) is not None
        assert backend.release(name, readers[0]) is False
        assert backend.try_acquire(name, writer, 10_000, "w", False, rw, rw).fence is not None  # all gone now
        assert backend.release(name, writer) is True
        assert backend.inspect(name) is None
    except (fencelock.FenceLockError, AssertionError) as err:
        errors.append(err)
    finally:
        client.close()
    return errors


def test_counted_leases_need_nothing_beyond_the_minimal_acl(acl_server: EmbeddedRedis, name: str) -> None:
    set_user(acl_server, "fl-minimal", minimal_acl())
    assert counted_scenario(acl_server, "fl-minimal", name) == []


@pytest.mark.parametrize("missing", MINIMAL_COMMANDS)
def test_every_command_of_the_minimal_acl_is_needed(acl_server: EmbeddedRedis, name: str, missing: str) -> None:
    # Needed by the mutex's scenario, or else by the counted leases' (HSET, HDEL: their queue only)
    set_user(acl_server, "fl-less", minimal_acl(without=missing))
    _, errors = full_scenario(acl_server, "fl-less", name)
    if not any(isinstance(e, fencelock.BackendRejected) for e in errors):
        errors = counted_scenario(acl_server, "fl-less", name + ":counted")
    rejected = [e for e in errors if isinstance(e, fencelock.BackendRejected)]
    assert rejected, f"without {missing!r} the scenario should be refused, got {errors!r}"
    assert "Redis ACL" in str(rejected[0]), "the message points at the ACL documentation"


def test_wait_replicas_needs_the_wait_command_too(acl_server: EmbeddedRedis, name: str) -> None:
    # The ACL server has no replica, so WAIT itself answers 0: refused grant, not a permission error.
    # set_user flushes the scripts, so the NOSCRIPT reload path runs here too.
    set_user(acl_server, "fl-wait", [*minimal_acl(), "+wait"])
    set_user(acl_server, "fl-nowait", minimal_acl())
    for user, expected in (("fl-wait", "0 of 1 replica"), ("fl-nowait", "no permissions to run the 'wait'")):
        client = user_client(acl_server, user)
        try:
            backend = fencelock.RedisBackend(client, wait_replicas=1, wait_timeout=0.05)
            with pytest.raises(fencelock.BackendRejected, match=expected):
                fencelock.Lock(name, backend).acquire(timeout=0)
            assert fencelock.Lock(name, client).inspect() is None, "no grant left behind"
        finally:
            client.close()


def test_a_user_without_evalsha_gets_a_clear_error_at_first_use(acl_server: EmbeddedRedis, name: str) -> None:
    set_user(acl_server, "fl-noeval", [*minimal_acl(without="evalsha"), "-eval"])
    client = user_client(acl_server, "fl-noeval")
    try:
        lock = fencelock.Lock(name, client, ttl=5)  # no I/O yet
        with pytest.raises(fencelock.BackendRejected, match=r"no permissions to run the 'evalsha' command.*Redis ACL"):
            lock.acquire(timeout=0)
    finally:
        client.close()


def test_a_user_limited_to_fencelock_keys_cannot_lock_outside_them(acl_server: EmbeddedRedis, name: str) -> None:
    set_user(acl_server, "fl-minimal", minimal_acl())
    client = user_client(acl_server, "fl-minimal")
    try:
        outside = fencelock.RedisBackend(client, prefix="app:")
        with pytest.raises(fencelock.BackendRejected, match="no permissions to access one of the keys"):
            fencelock.Lock(name, outside).acquire(timeout=0)
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.set("app:data", "x")
    finally:
        client.close()


# -- key names ------------------------------------------------------------------------------------

TRICKY_NAMES = [
    "plain",
    "with space",
    "new\nline",
    "tab\there",
    "{",
    "}",
    "{}",
    "{plain}",
    "}{plain",
    "%7B",
    "%7Bplain%7D",
    "%",
    "%25",
    "100%",
    "ünïcødé ☃ 锁",
    "emoji 🔒",
    "a:b:lock",
    "plain}:lock",
    "fencelock:{plain}:lock",
    "x' .. redis.call('FLUSHALL') .. '",
    "]]) redis.call('FLUSHALL') --",
    "*",
    "?",
    "\\",
]


@pytest.fixture
def plain_redis(redis_debian_server: object) -> Iterator[redis.Redis]:
    client = redis_debian_server.server.client(socket_timeout=10)  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        client.close()


def test_tricky_names_get_their_own_keys_in_one_slot(plain_redis: redis.Redis, name: str) -> None:
    prefix = f"sec-{name}:"
    backend = fencelock.RedisBackend(plain_redis, prefix=prefix)
    locks = [fencelock.Lock(n, backend, ttl=30, renew=False) for n in TRICKY_NAMES]
    leases = [lock.acquire(timeout=0) for lock in locks]  # all held at once: none blocks another
    try:
        written = {k.decode() for k in plain_redis.scan_iter(match=f"{prefix}*", count=1000)}
        expected: set[str] = set()
        for n in TRICKY_NAMES:
            keys = RedisKeys(prefix, n)
            expected |= {keys.lock, keys.fence}
            assert len({key_slot(k.encode()) for k in keys.all4()}) == 1, f"{n!r}: one hash slot"
        assert written == expected, "exactly the keys of these locks, nothing else"
        for lease, n in zip(leases, TRICKY_NAMES, strict=True):
            assert plain_redis.get(RedisKeys(prefix, n).lock).decode().startswith(lease.token + ":")
        tags = [RedisKeys(prefix, n).lock for n in TRICKY_NAMES]
        assert len(set(tags)) == len(TRICKY_NAMES), "no two names share a key"
        for lease in leases:
            lease.release()
        remaining = {k.decode() for k in plain_redis.scan_iter(match=f"{prefix}*", count=1000)}
        assert remaining == {RedisKeys(prefix, n).fence for n in TRICKY_NAMES}, "only fence counters stay"
        assert plain_redis.dbsize() > 0, "no name's script ran FLUSHALL"
    finally:
        for lease in leases:
            if not lease._released:
                lease.release()


def test_a_name_cannot_release_or_inspect_another(plain_redis: redis.Redis, name: str) -> None:
    backend = fencelock.RedisBackend(plain_redis, prefix=f"sec2-{name}:")
    held = fencelock.Lock("{", backend).acquire(timeout=0)
    try:
        for other in ("%7B", "{{", "{}", "", "%", "{ "):
            if not other:
                continue
            assert fencelock.Lock(other, backend).inspect() is None, other
            assert backend.force_release(other) is None, other
        info = fencelock.Lock("{", backend).inspect()
        assert info is not None and info.fence == held.fence
    finally:
        held.release()


# -- prefixes -------------------------------------------------------------------------------------


def test_prefix_keeps_fencelock_keys_apart_from_the_applications(plain_redis: redis.Redis, name: str) -> None:
    app_key = f"app-{name}:{{{name}}}:lock"
    plain_redis.set(app_key, "the application's own data")
    a = fencelock.RedisBackend(plain_redis, prefix=f"a-{name}:")
    b = fencelock.RedisBackend(plain_redis, prefix=f"b-{name}:")
    with fencelock.Lock(name, a) as la, fencelock.Lock(name, b) as lb:
        # Two prefixes are two separate lock spaces: both hold "name" at once.
        assert la.held and lb.held
        assert plain_redis.exists(RedisKeys(f"a-{name}:", name).lock) == 1
        assert plain_redis.exists(RedisKeys(f"b-{name}:", name).lock) == 1
    assert plain_redis.get(app_key) == b"the application's own data"
    assert not list(plain_redis.scan_iter(match=f"fencelock:{{{name}}}*")), "nothing under the default prefix"


def test_prefix_in_the_url(redis_debian_server: object, plain_redis: redis.Redis, name: str) -> None:
    url = redis_debian_server.url  # type: ignore[attr-defined]
    lock = fencelock.Lock(name, f"{url}?prefix=tenant-{name}:")
    try:
        with lock:
            assert plain_redis.exists(RedisKeys(f"tenant-{name}:", name).lock) == 1
            assert plain_redis.exists(RedisKeys("fencelock:", name).lock) == 0
    finally:
        lock.close()


@pytest.mark.parametrize("bad", ["{tenant}:", "x}", 7])
def test_a_prefix_that_would_change_the_hash_tag_is_refused(plain_redis: redis.Redis, bad: object) -> None:
    with pytest.raises(fencelock.ConfigurationError, match="prefix"):
        fencelock.RedisBackend(plain_redis, prefix=bad)  # type: ignore[arg-type]


# -- tokens: unguessable, and never handed out twice ------------------------------------------------


def test_tokens_from_many_threads_are_all_different() -> None:
    import threading

    tokens: list[list[str]] = [[] for _ in range(8)]
    start = threading.Barrier(8, timeout=30)

    def draw(out: list[str]) -> None:
        start.wait()
        out.extend(new_token() for _ in range(5000))  # 5000 x 16 bytes: the 4 KiB pool refills often

    threads = [threading.Thread(target=draw, args=(out,)) for out in tokens]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    every = [tok for out in tokens for tok in out]
    assert len(every) == 40000 and len(set(every)) == 40000
    assert all(len(tok) == 32 and int(tok, 16) >= 0 for tok in every[:100])


def test_a_forked_child_does_not_hand_out_its_parents_next_tokens() -> None:
    import multiprocessing as mp

    new_token()  # the pool holds bytes the parent has not handed out yet
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    child = ctx.Process(target=lambda: out.put([new_token() for _ in range(300)]))
    child.start()
    try:
        theirs = out.get(timeout=30)
    finally:
        child.join(30)
    ours = [new_token() for _ in range(300)]
    assert not set(theirs) & set(ours), "the child reused the parent's random bytes"
