"""Counted leases (semaphores, read-write locks) at the backend level, on every backend that has them.

What ``fencelock.backends.base`` ("Counted leases") promises, checked on the primitives with no handle
in between, on real servers: the limit is never exceeded (across processes too), weights (a writer
takes every permit, readers share), first come first served (a reader behind a waiting writer waits;
a writer's release lets every reader queued behind it in), the limit binding (``LimitMismatch``) and
an idle name taking a new limit, fences from the one counter, extend/release/abandon by token,
``inspect``'s holders, dead waiters skipped, a killed holder's permits freed.

Each test runs on every backend whose test server has the capability ``counted``. A backend that
hands permits over on release (``wait`` returns the fence) and one that does not (the waiter's next
``try_acquire`` takes them) both pass: a token that already holds is answered with its fence.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest

import fencelock
from fencelock._core.params import new_token
from fencelock.backends import open_async_backend, open_backend
from fencelock.backends.base import RW_LIMIT, AsyncBackend, Backend, KnowsLastFence

pytestmark = pytest.mark.needs("counted")

CTX = mp.get_context("spawn")
TTL_MS = 30_000
LABEL = "counted-test"
DEAD_AFTER = 5.0  # s: longer than every test server's registration time or session timeout
READ, WRITE = 1, RW_LIMIT  # a read-write lock's weights


@pytest.fixture
def backend(lock_server: Any) -> Iterator[Backend]:
    b, _ = open_backend(lock_server.url)
    try:
        yield b
    finally:
        b.close()


def take(
    backend: Backend, name: str, limit: int, weight: int = 1, token: str | None = None, label: str = LABEL
) -> tuple[str, int]:
    """One try_acquire that must be granted: (token, fence)."""
    token = token or new_token()
    attempt = backend.try_acquire(name, token, TTL_MS, label, False, limit, weight)
    assert attempt.fence is not None, f"refused: {attempt}"
    return token, attempt.fence


def refused(backend: Backend, name: str, token: str, limit: int, weight: int = 1, queue: bool = True) -> bool:
    """True when one try_acquire (queued by default) is refused."""
    return backend.try_acquire(name, token, TTL_MS, LABEL, queue, limit, weight).fence is None


def obtain(
    backend: Backend,
    name: str,
    token: str,
    limit: int,
    weight: int = 1,
    timeout: float = 60.0,
    ttl_ms: int = TTL_MS,
    label: str = LABEL,
) -> int:
    """A blocking acquire on the primitives, as the handle does it (queued, wait between tries,
    a handed-over fence taken as it comes); the fence, or AssertionError after ``timeout``."""
    end = time.monotonic() + timeout
    for _ in range(100_000):  # bounded by the clock; the count is a backstop
        attempt = backend.try_acquire(name, token, ttl_ms, label, True, limit, weight)
        if attempt.fence is not None:
            return attempt.fence
        left = end - time.monotonic()
        if left <= 0:
            break
        pause = left if attempt.retry_after is None else min(left, max(attempt.retry_after, 0.001))
        handed = backend.wait(name, token, pause)
        if handed is not None:
            return handed
    backend.abandon(name, token)
    raise AssertionError(f"not granted within {timeout:g} s")


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant (an end at the same instant as a begin does not overlap)."""
    events = sorted([(b, 1) for b, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


# -- the limit and the weights -------------------------------------------------------------------


def test_a_semaphore_grants_up_to_its_limit_and_a_release_makes_room(backend: Backend, name: str) -> None:
    holders = [take(backend, name, 3) for _ in range(3)]
    late = new_token()
    assert refused(backend, name, late, 3, queue=False), "a fourth permit of three"
    assert backend.release(name, holders[0][0]) is True
    _, fence = take(backend, name, 3, token=late)
    assert fence > max(f for _, f in holders)
    for token, _ in [*holders[1:], (late, fence)]:
        assert backend.release(name, token) is True
    assert backend.inspect(name) is None


def test_readers_share_and_a_writer_excludes_everyone(backend: Backend, name: str) -> None:
    readers = [take(backend, name, RW_LIMIT, READ) for _ in range(3)]
    writer = new_token()
    assert refused(backend, name, writer, RW_LIMIT, WRITE, queue=False), "a writer beside readers"
    for token, _ in readers:
        assert backend.release(name, token) is True
    _, fence = take(backend, name, RW_LIMIT, WRITE, token=writer)
    assert refused(backend, name, new_token(), RW_LIMIT, READ, queue=False), "a reader beside a writer"
    assert refused(backend, name, new_token(), RW_LIMIT, WRITE, queue=False), "two writers"
    info = backend.inspect(name)
    assert info is not None and [(h.fence, h.weight) for h in info.holders] == [(fence, WRITE)]
    assert backend.release(name, writer) is True


def test_a_repeated_request_of_a_holder_answers_its_fence_and_takes_nothing_more(backend: Backend, name: str) -> None:
    token, fence = take(backend, name, 2)
    for _ in range(3):  # its first answers were lost: asking again must not take a second permit
        assert backend.try_acquire(name, token, TTL_MS, LABEL, True, 2, 1).fence == fence
    other, _ = take(backend, name, 2)  # so the second permit is still free
    info = backend.inspect(name)
    assert info is not None and len(info.holders) == 2
    for t in (token, other):
        assert backend.release(name, t) is True


def _hold_permits(url: str, name: str, limit: int, weight: int, rounds: int, start: Any, out: Any) -> None:
    backend, _ = open_backend(url)
    records: list[tuple[float, ...]] = []
    try:
        start.wait(60)
        for _ in range(rounds):
            token = new_token()
            asked = time.monotonic()  # CLOCK_MONOTONIC: one clock for every process of the host
            fence = obtain(backend, name, token, limit, weight, timeout=120, ttl_ms=20_000)
            begin = time.monotonic()
            time.sleep(0.005)
            end = time.monotonic()
            assert backend.release(name, token) is True, "lost a permit while holding it"
            records.append((begin, end, fence, weight, asked))
        out.put(records)
    except BaseException as err:
        out.put(repr(err))
        raise
    finally:
        backend.close()


def _run_holders(url: str, name: str, plan: list[tuple[int, int]], rounds: int) -> list[tuple[float, ...]]:
    """Processes (one per (limit, weight) in ``plan``) taking permits ``rounds`` times each."""
    start, out = CTX.Event(), CTX.Queue()
    procs = [
        CTX.Process(target=_hold_permits, args=(url, name, limit, weight, rounds, start, out)) for limit, weight in plan
    ]
    for p in procs:
        p.start()
    records: list[tuple[float, ...]] = []
    try:
        start.set()
        for _ in procs:
            got = out.get(timeout=240)
            assert not isinstance(got, str), f"a worker failed: {got}"
            records.extend(got)
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join(10)
    assert len(records) == len(plan) * rounds
    return records


def _fences_follow_the_grants(records: list[tuple[float, ...]]) -> None:
    fences = [r[2] for r in records]
    assert len(set(fences)) == len(fences), "a fence was handed out twice"
    # a was out before b even asked: b's grant came after a's, so did its fence. (When b asked
    # before a was out, b may have been granted first and only noticed late: ZooKeeper's grants
    # follow the queue, and a waiter learns of its turn from a watch.)
    for a in records:
        for b in records:
            if a[1] <= b[4]:
                assert b[2] > a[2], "fences must increase in grant order"


def test_processes_never_hold_more_permits_than_the_limit(lock_server: Any, name: str) -> None:
    limit, workers, rounds = 2, 4, 8
    records = _run_holders(lock_server.url, name, [(limit, 1)] * workers, rounds)
    assert max_overlap([(b, e) for b, e, *_ in records]) <= limit, "more holders at once than permits"
    _fences_follow_the_grants(records)


def test_processes_mixing_readers_and_writers_never_overlap_a_writer(lock_server: Any, name: str) -> None:
    plan = [(RW_LIMIT, READ)] * 3 + [(RW_LIMIT, WRITE)] * 2
    records = _run_holders(lock_server.url, name, plan, 6)
    writers = [(b, e) for b, e, _, w, _ in records if w == WRITE]
    everyone = [(b, e) for b, e, *_ in records]
    for wb, we in writers:
        overlapping = [(b, e) for b, e in everyone if b < we and wb < e]
        assert overlapping == [(wb, we)], "someone held the lock beside a writer"
    _fences_follow_the_grants(records)


# -- first come, first served --------------------------------------------------------------------


def test_a_reader_behind_a_waiting_writer_waits(backend: Backend, name: str) -> None:
    reader, _ = take(backend, name, RW_LIMIT, READ)
    writer, late_reader = new_token(), new_token()
    assert refused(backend, name, writer, RW_LIMIT, WRITE)  # queued
    assert refused(backend, name, late_reader, RW_LIMIT, READ), "a reader overtook the waiting writer"
    assert backend.release(name, reader) is True
    w_fence = obtain(backend, name, writer, RW_LIMIT, WRITE, timeout=30)
    assert refused(backend, name, late_reader, RW_LIMIT, READ), "a reader beside the writer"
    assert backend.release(name, writer) is True
    r_fence = obtain(backend, name, late_reader, RW_LIMIT, READ, timeout=30)
    assert r_fence > w_fence
    assert backend.release(name, late_reader) is True


def test_a_writers_release_lets_every_queued_reader_in_and_none_past_the_next_writer(
    backend: Backend, name: str
) -> None:
    writer, w_fence = take(backend, name, RW_LIMIT, WRITE)
    readers = [new_token() for _ in range(3)]
    second_writer, last_reader = new_token(), new_token()
    for token in readers:
        assert refused(backend, name, token, RW_LIMIT, READ)
    assert refused(backend, name, second_writer, RW_LIMIT, WRITE)
    assert refused(backend, name, last_reader, RW_LIMIT, READ)
    assert backend.release(name, writer) is True
    # Each queued reader's next request succeeds, in queue order, with nobody releasing meanwhile
    # (a backend that hands over has granted them all already and answers their fences).
    fences = []
    for token in readers:
        attempt = backend.try_acquire(name, token, TTL_MS, LABEL, True, RW_LIMIT, READ)
        assert attempt.fence is not None, "a reader queued behind the writer was left waiting"
        fences.append(attempt.fence)
    assert w_fence < fences[0] < fences[1] < fences[2]
    info = backend.inspect(name)
    assert info is not None and sorted(h.fence for h in info.holders) == fences, "all readers hold together"
    assert refused(backend, name, second_writer, RW_LIMIT, WRITE), "a writer beside readers"
    assert refused(backend, name, last_reader, RW_LIMIT, READ), "a reader overtook the waiting writer"
    for token in readers:
        assert backend.release(name, token) is True
    w2 = obtain(backend, name, second_writer, RW_LIMIT, WRITE, timeout=30)
    assert w2 > fences[-1]
    assert backend.release(name, second_writer) is True
    assert obtain(backend, name, last_reader, RW_LIMIT, READ, timeout=30) > w2
    assert backend.release(name, last_reader) is True


def test_semaphore_waiters_take_freed_permits_in_arrival_order(backend: Backend, name: str) -> None:
    holders = [take(backend, name, 2)[0] for _ in range(2)]
    first, second = new_token(), new_token()
    assert refused(backend, name, first, 2)
    assert refused(backend, name, second, 2)
    newcomer = new_token()
    assert backend.release(name, holders[0]) is True
    assert refused(backend, name, second, 2), "the second waiter took the permit the first one waits for"
    assert refused(backend, name, newcomer, 2, queue=False), "a newcomer barged past the waiters"
    f1 = obtain(backend, name, first, 2, timeout=30)
    assert backend.release(name, holders[1]) is True
    f2 = obtain(backend, name, second, 2, timeout=30)
    assert f2 > f1
    for token in (first, second):
        assert backend.release(name, token) is True


# -- the limit binds while the name is in use ----------------------------------------------------


@pytest.mark.parametrize(
    ("held", "asked"),
    [(1, 3), (3, 1), (3, 5), (RW_LIMIT, 1), (RW_LIMIT, 3)],
    ids=["mutex-then-semaphore", "semaphore-then-mutex", "3-then-5", "rwlock-then-mutex", "rwlock-then-semaphore"],
)
def test_another_limit_on_a_held_name_is_refused_and_changes_nothing(
    backend: Backend, name: str, held: int, asked: int
) -> None:
    token, fence = take(backend, name, held)
    stranger = new_token()
    with pytest.raises(fencelock.LimitMismatch) as caught:
        backend.try_acquire(name, stranger, TTL_MS, LABEL, True, asked, 1)
    assert (caught.value.name, caught.value.limit, caught.value.current) == (name, asked, held)
    assert isinstance(caught.value, fencelock.BackendRejected)
    info = backend.inspect(name)
    assert info is not None and [h.fence for h in info.holders] == [fence] and info.limit == held
    assert backend.release(name, token) is True
    # the refused request was not queued: the name is idle now and takes the next user's limit
    other, _ = take(backend, name, asked)
    info = backend.inspect(name)
    assert info is not None and info.limit == asked
    assert backend.release(name, other) is True


def test_queued_waiters_bind_the_limit_of_a_name_nobody_holds(backend: Backend, name: str) -> None:
    holder, _ = take(backend, name, 1, 1)  # a semaphore of 1, full
    waiter = new_token()
    assert refused(backend, name, waiter, 1)
    assert backend.release(name, holder) is True
    with pytest.raises(fencelock.LimitMismatch) as caught:
        backend.try_acquire(name, new_token(), TTL_MS, LABEL, False, 5, 1)
    assert caught.value.current == 1
    backend.abandon(name, waiter)  # the last user leaves: the name is idle
    five, _ = take(backend, name, 5)
    assert backend.release(name, five) is True


def test_an_idle_name_takes_the_limit_of_its_next_user(backend: Backend, name: str) -> None:
    fences = []
    for limit in (3, 5, 1, RW_LIMIT, 2):  # a redeploy changes the limit once the old users are gone
        token, fence = take(backend, name, limit)
        info = backend.inspect(name)
        assert info is not None and info.limit == limit
        assert backend.release(name, token) is True
        fences.append(fence)
    assert fences == sorted(set(fences)), "one counter for the name, whatever its limit"


# -- fences, extend/release/abandon, inspect -----------------------------------------------------


def test_every_grant_mints_the_next_fence_of_the_one_counter(backend: Backend, name: str) -> None:
    mutex, m = take(backend, name, 1)
    assert backend.release(name, mutex) is True
    readers = [take(backend, name, RW_LIMIT, READ) for _ in range(3)]
    for token, _ in readers:
        assert backend.release(name, token) is True
    writer, w = take(backend, name, RW_LIMIT, WRITE)
    assert backend.release(name, writer) is True
    fences = [m, *(f for _, f in readers), w]
    assert fences == sorted(set(fences)), "fences unique and strictly increasing in grant order"
    if isinstance(backend, KnowsLastFence):
        assert backend.last_fence(name) == w


def test_extend_release_and_abandon_find_a_lease_by_its_token(backend: Backend, name: str) -> None:
    a, fa = take(backend, name, 3, label="a")
    b, fb = take(backend, name, 3, label="b")
    c, fc = take(backend, name, 3, label="c")
    stranger = new_token()
    assert backend.extend(name, stranger, TTL_MS) is False
    assert backend.release(name, stranger) is False
    assert backend.extend(name, b, 60_000) is True
    assert backend.release(name, b) is True
    assert backend.release(name, b) is False, "a second release finds nothing of ours"
    assert backend.extend(name, b, 60_000) is False, "nor does an extend after it"
    backend.abandon(name, c)  # a grant whose answer was never read is passed on
    backend.abandon(name, c)
    backend.abandon(name, stranger)
    info = backend.inspect(name)
    assert info is not None and [(h.fence, h.holder) for h in info.holders] == [(fa, "a")]
    assert fb < fc
    assert backend.release(name, a) is True
    assert backend.inspect(name) is None


def test_inspect_lists_every_holder_oldest_first_never_a_token(backend: Backend, name: str) -> None:
    grants = [take(backend, name, 4, label=f"worker-{i}") for i in range(3)]
    info = backend.inspect(name)
    assert info is not None
    assert info.limit == 4
    assert [(h.fence, h.holder, h.weight) for h in info.holders] == [
        (fence, f"worker-{i}", 1) for i, (_, fence) in enumerate(grants)
    ]
    # None: the backend cannot tell others when a lease ends (ZooKeeper: with the holder's session)
    assert all(h.ttl_remaining is None or 0 < h.ttl_remaining <= TTL_MS / 1000 for h in info.holders)
    newest = info.holders[-1]
    assert (info.fence, info.holder) == (newest.fence, newest.holder) == (grants[-1][1], "worker-2")
    assert all(token not in repr(info) for token, _ in grants)
    for token, _ in grants:
        assert backend.release(name, token) is True
    assert backend.inspect(name) is None


def test_inspect_shows_a_writers_weight_and_the_read_write_limit(backend: Backend, name: str) -> None:
    writer, fence = take(backend, name, RW_LIMIT, WRITE, label="writer")
    info = backend.inspect(name)
    assert info is not None and info.limit == RW_LIMIT
    assert [(h.fence, h.holder, h.weight) for h in info.holders] == [(fence, "writer", WRITE)]
    assert backend.release(name, writer) is True


# -- processes that die ----------------------------------------------------------------------------


def _take_and_hang(url: str, name: str, limit: int, weight: int, ttl_ms: int, queue: bool, out: Any) -> None:
    backend, _ = open_backend(url)
    attempt = backend.try_acquire(name, new_token(), ttl_ms, "doomed", queue, limit, weight)
    out.put(attempt.fence)
    time.sleep(300)  # killed long before this


def _killed_after(url: str, name: str, limit: int, weight: int, ttl_ms: int, queue: bool) -> int | None:
    """A process that makes one request and is then SIGKILLed; its answer (fence or None)."""
    out = CTX.Queue()
    child = CTX.Process(target=_take_and_hang, args=(url, name, limit, weight, ttl_ms, queue, out))
    child.start()
    try:
        fence: int | None = out.get(timeout=120)
    finally:
        if child.pid is not None:
            os.kill(child.pid, signal.SIGKILL)
        child.join(30)
    return fence


def test_a_killed_holders_permit_is_freed(lock_server: Any, backend: Backend, name: str) -> None:
    mine, mine_fence = take(backend, name, 2)
    dead_fence = _killed_after(lock_server.url, name, 2, 1, 1_500, False)
    assert dead_fence is not None
    assert refused(backend, name, new_token(), 2, queue=False), "both permits are held"
    late = new_token()
    fence = obtain(backend, name, late, 2, timeout=90)  # once the dead holder's lease is over
    assert fence > dead_fence
    info = backend.inspect(name)
    assert info is not None and [h.fence for h in info.holders] == [mine_fence, fence], "the dead one is gone"
    for token in (mine, late):
        assert backend.release(name, token) is True


def test_a_dead_writer_at_the_head_does_not_hold_back_the_readers(
    lock_server: Any, backend: Backend, name: str
) -> None:
    reader, _ = take(backend, name, RW_LIMIT, READ)
    assert _killed_after(lock_server.url, name, RW_LIMIT, WRITE, TTL_MS, True) is None  # queued, then died
    late_reader = new_token()
    # FIFO holds the reader back only while the writer lives; once it is known dead it is skipped
    fence = obtain(backend, name, late_reader, RW_LIMIT, READ, timeout=90)
    info = backend.inspect(name)
    assert info is not None and len(info.holders) == 2 and info.holders[-1].fence == fence
    for token in (reader, late_reader):
        assert backend.release(name, token) is True


# -- asyncio -----------------------------------------------------------------------------------------


@pytest.mark.needs("counted")
def test_a_light_request_never_overtakes_a_heavier_waiter(backend: Backend, name: str) -> None:
    holder, _ = take(backend, name, 3, label="holder")
    heavy = new_token()
    assert refused(backend, name, heavy, 3, 3), "all three permits: it waits for the holder"
    assert refused(backend, name, new_token(), 3, 1, queue=False), "one permit is free, but a waiter came first"
    light = new_token()
    assert refused(backend, name, light, 3, 1)
    assert backend.release(name, holder) is True
    obtain(backend, name, heavy, 3, 3, timeout=20)
    assert refused(backend, name, light, 3, 1), "no room beside all three permits"
    assert backend.release(name, heavy) is True
    obtain(backend, name, light, 3, 1, timeout=20)
    assert backend.release(name, light) is True


def _dying_client(url: str, name: str, limit: int, ttl_ms: int, hold: bool, out: Any) -> None:
    """Take a permit (``hold``) or queue for one, report, then sleep until killed."""
    backend, _ = open_backend(url)
    attempt = backend.try_acquire(name, new_token(), ttl_ms, "doomed", not hold, limit, 1)
    out.put(attempt.fence)
    time.sleep(120)  # killed long before


@pytest.mark.needs("counted")
def test_dead_waiters_are_skipped(lock_server: Any, backend: Backend, name: str) -> None:
    holders = [take(backend, name, 2, label=f"h{i}")[0] for i in range(2)]
    dying = []
    try:
        for _ in range(3):
            out = CTX.Queue()
            proc = CTX.Process(target=_dying_client, args=(lock_server.url, name, 2, TTL_MS, False, out), daemon=True)
            proc.start()
            dying.append(proc)
            assert out.get(timeout=60) is None, "the doomed client queued"
    finally:
        for proc in dying:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signal.SIGKILL)
            proc.join(10)
    # A waiter counts as dead once it stopped polling for the backend's registration time (Redis,
    # SQLite: 2 s) or its session ended (ZooKeeper, the test server's: 4 s); until then a release
    # may still hand it the permits, as it would any live waiter.
    time.sleep(DEAD_AFTER)
    live = new_token()
    assert refused(backend, name, live, 2)
    assert backend.release(name, holders[0]) is True
    obtain(backend, name, live, 2, timeout=30)  # the dead waiters ahead of it are skipped
    info = backend.inspect(name)
    assert info is not None and "doomed" not in [h.holder for h in info.holders]
    assert backend.release(name, live) is True
    assert backend.release(name, holders[1]) is True


@pytest.mark.needs("counted")
def test_weights_count_against_the_limit(backend: Backend, name: str) -> None:
    heavy, _ = take(backend, name, 5, 3)
    light, _ = take(backend, name, 5, 2)
    assert refused(backend, name, new_token(), 5, 1, queue=False), "3 + 2 of 5 are taken"
    assert backend.release(name, light) is True
    assert refused(backend, name, new_token(), 5, 3, queue=False), "3 + 3 > 5"
    two, _ = take(backend, name, 5, 2)
    for token in (heavy, two):
        assert backend.release(name, token) is True


@pytest.mark.needs("counted")
def test_mutex_and_counted_uses_may_follow_each_other(backend: Backend, name: str) -> None:
    fences = []
    for limit, weight in [(1, 1), (3, 1), (1, 1), (RW_LIMIT, RW_LIMIT), (RW_LIMIT, 1), (1, 1)]:
        token, fence = take(backend, name, limit, weight)
        fences.append(fence)
        assert backend.release(name, token) is True
        assert backend.inspect(name) is None
    assert fences == sorted(set(fences)), "one fence counter for every kind of use"


@pytest.mark.needs("counted")
def test_a_mutex_inspect_says_limit_one(backend: Backend, name: str) -> None:
    token = new_token()
    fence = backend.try_acquire(name, token, TTL_MS, LABEL, False).fence
    info = backend.inspect(name)
    assert info is not None and info.limit == 1 and info.fence == fence
    assert [h.fence for h in info.holders] in ([], [fence])
    assert backend.release(name, token) is True


@pytest.mark.needs("counted")
def test_bad_limits_and_weights_are_refused_before_any_io(backend: Backend, name: str) -> None:
    for limit, weight in [(0, 1), (3, 0), (3, 4), (1, 2), (RW_LIMIT + 1, 1), (-1, 1)]:
        with pytest.raises(fencelock.ConfigurationError):
            backend.try_acquire(name, new_token(), TTL_MS, LABEL, False, limit, weight)
    assert backend.inspect(name) is None


async def test_the_asyncio_primitives_take_counted_requests(lock_server: Any, name: str) -> None:
    b: AsyncBackend
    b, _ = open_async_backend(lock_server.url)
    try:
        tokens = [new_token() for _ in range(3)]
        fences = []
        for token in tokens[:2]:
            got = await b.try_acquire(name, token, TTL_MS, LABEL, False, 2, 1)
            assert got.fence is not None
            fences.append(got.fence)
        assert (await b.try_acquire(name, tokens[2], TTL_MS, LABEL, False, 2, 1)).fence is None
        with pytest.raises(fencelock.LimitMismatch):
            await b.try_acquire(name, tokens[2], TTL_MS, LABEL, False, 1, 1)
        info = await b.inspect(name)
        assert info is not None and info.limit == 2 and [h.fence for h in info.holders] == fences
        assert await b.extend(name, tokens[0], TTL_MS) is True
        assert await b.release(name, tokens[0]) is True
        got = await b.try_acquire(name, tokens[2], TTL_MS, LABEL, True, 2, 1)
        assert got.fence is not None and got.fence > fences[1]
        await b.abandon(name, tokens[1])
        assert await b.release(name, tokens[2]) is True
        assert await b.inspect(name) is None
    finally:
        await b.aclose()
