"""One stress worker process: threads with blocking locks and an asyncio loop with tasks, doing
random lock operations from a seeded schedule and recording everything (see history.py).

Started by the run (``multiprocessing`` spawn) with a plain dict of settings. What it does:

- ``threads`` threads, each a seeded random sequence of ``acquire(timeout)``, ``try_acquire()``,
  ``with lock:``; while holding, a random mix of sleeps (sometimes past the TTL), fenced writes,
  ``extend(random ttl)`` and ``ensure_held()`` / ``lost`` checks, then ``release()``.
- ``tasks`` asyncio tasks doing the same with ``fencelock.aio``, plus cancellation of acquires and
  of holders at random moments (sometimes right at the acquire's timeout, while it cleans up), and
  critical sections that do socket I/O with a timeout (redis.asyncio on Redis, ``wait_for``
  elsewhere) so that a cancellation arriving as an operation completes is exercised.
- Lock objects are shared by several threads/tasks; locks differ in TTL, renewal (off, default,
  fast) and ``cancel_on_loss``; every lock has an ``on_lost`` callback that records.
- ``crowd``: instead, one task takes a lock and holds it while ``crowd`` tasks queue behind it;
  the injector kills the process (leaving a queue of dead waiters).
- ``inject``: ``spawn_fail`` makes starting a lease's renewer raise RuntimeError (as
  ``threading.Thread.start`` does when no thread can be made) in about half the cases.

Observation from outside the library: a property on the Lease classes records every deadline the
library sets (at grant, after extend, after each renewal); a monitor thread records when
``lost_event`` is set and when the lease's lost reason appears, without calling anything that
could itself mark the lease lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import random
import sqlite3
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import fencelock
import fencelock.aio
from fencelock import FenceLockError, LeaseLost, fencing

from .history import Recorder

REC: Recorder | None = None
TASK: contextvars.ContextVar[str | None] = contextvars.ContextVar("stress_task", default=None)
"""The id of the asyncio task an operation runs in (recorded with its calls: the checker needs to
know whether *we* cancelled the task a lease belongs to)."""
_ids = iter(range(1, 1 << 62))
_ids_lock = threading.Lock()


def emit(ev: str, t: float | None = None, **fields: Any) -> None:
    if REC is not None:
        if ev == "call":
            task = TASK.get()
            if task is not None:
                fields["task"] = task
        REC.emit(ev, t=t, **fields)


def new_id(prefix: str) -> str:
    with _ids_lock:
        return f"{prefix}{next(_ids)}"


def now() -> float:
    return time.monotonic()


# -- observation ----------------------------------------------------------------------------------


def install_deadline_probe(cls: type) -> None:
    """Make ``cls._deadline`` a property that records each value the library sets."""

    def get(self: Any) -> float:
        return float(self.__dict__["_stress_deadline"])

    def put(self: Any, value: float) -> None:
        t = now()  # before the store: an update is never stamped later than it took effect
        self.__dict__.setdefault("_stress_granted_at", t)
        self.__dict__["_stress_deadline"] = value
        if _in_renewer():
            self.__dict__["_stress_renewed_at"] = t  # for the workload's extends timed to collide
        emit("dl", t=t, token=self.token, deadline=value, obj=id(self))

    cls._deadline = property(get, put)  # type: ignore[attr-defined]


def _in_renewer() -> bool:
    """True when the caller is fencelock's renewer (its thread, or its asyncio task)."""
    if threading.current_thread().name == "fencelock-renewer":
        return True
    try:
        task = asyncio.current_task()
    except RuntimeError:
        return False
    return task is not None and task.get_name() == "fencelock-renewer"


def next_renewal(lease: Any) -> float | None:
    """When the lease's renewer will next send its extend, if it runs: its last renewal plus the
    interval, or (none yet) the grant plus the interval, when the renewer starts and extends."""
    interval = lease._lock._params.renew_interval
    last = lease.__dict__.get("_stress_renewed_at", lease.__dict__.get("_stress_granted_at"))
    if interval is None or last is None:
        return None
    return float(last) + float(interval)


class Monitor:
    """Polls live leases every 10 ms for ``lost_event`` and the lost reason (private attribute:
    reading ``lost`` would itself mark an expired lease lost and hide a missing timer)."""

    def __init__(self) -> None:
        self._leases: dict[str, tuple[Any, float]] = {}
        self._seen: dict[str, set[str]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stress-monitor", daemon=True)
        self._thread.start()

    def watch(self, lease: Any) -> None:
        lease.lost_event  # noqa: B018 - made now, so that later it is only set, never created
        with self._lock:
            self._leases[lease.token] = (lease, float("inf"))
            self._seen.setdefault(lease.token, set())

    def done(self, lease: Any, linger: float = 1.5) -> None:
        """Stop watching ``linger`` s from now (a refused release sets the signals after it returns)."""
        with self._lock:
            if lease.token in self._leases:
                self._leases[lease.token] = (lease, now() + linger)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            t = now()
            with self._lock:
                items = list(self._leases.items())
            for token, (lease, until) in items:
                seen = self._seen[token]
                if "event" not in seen and lease.lost_event.is_set():
                    seen.add("event")
                    emit("sig", token=token, kind="event", fence=lease.fence)
                if "reason" not in seen and lease._lost_reason is not None:
                    seen.add("reason")
                    emit("sig", token=token, kind="reason", fence=lease.fence, reason=lease._lost_reason)
                if t > until or len(seen) == 2:
                    with self._lock:
                        self._leases.pop(token, None)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)


MONITOR: Monitor | None = None


def on_lost(lease: Any) -> None:
    emit("sig", token=lease.token, kind="on_lost", fence=lease.fence, obj=id(lease))


# -- injected client faults -----------------------------------------------------------------------


def inject_spawn_failure(rng: random.Random) -> None:
    """Starting a renewer fails about half the time, as ``Thread.start`` does when the process
    cannot make another thread. A monkeypatch of fencelock's one function that starts it."""
    from fencelock._async import _compat as acompat
    from fencelock._sync import _compat as scompat

    lock = threading.Lock()

    def failing(original: Callable[..., Any]) -> Callable[..., Any]:
        def spawn(fn: Callable[..., Any], *args: Any) -> Any:
            with lock:
                fail = rng.random() < 0.5
            if fail:
                lease = args[0]() if args and callable(args[0]) else None
                emit("inject", what="spawn", token=getattr(lease, "token", None))
                raise RuntimeError("can't start new thread")
            return original(fn, *args)

        return spawn

    scompat.spawn = failing(scompat.spawn)  # type: ignore[assignment]
    acompat.spawn = failing(acompat.spawn)  # type: ignore[assignment]


# -- fenced writes --------------------------------------------------------------------------------

_db = threading.local()


def _conn(path: str) -> sqlite3.Connection:
    conn: sqlite3.Connection | None = getattr(_db, "conn", None)
    if conn is None:
        conn = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
        _db.conn = conn
    return conn


def fenced_write(path: str, lease: Any) -> None:
    """One transaction: admit the fence for the lock's resource, log the write, commit."""
    t0 = now()
    res, detail = "error", ""
    conn = _conn(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            fencing.admit(conn, lease.name, lease.fence)
            conn.execute(
                "INSERT INTO writes (resource, fence, token, pid, t) VALUES (?, ?, ?, ?, ?)",
                (lease.name, lease.fence, lease.token, os.getpid(), now()),
            )
            conn.execute("COMMIT")
            res = "accepted"
        except fencelock.StaleFence as err:
            res, detail = "refused", str(err)
            conn.execute("ROLLBACK")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    except sqlite3.Error as err:
        detail = f"{type(err).__name__}: {err}"
    except Exception as err:  # admit raised something undocumented
        emit("unexpected", where="fencing.admit", exc=type(err).__name__, tb=traceback.format_exc())
    emit("write", t0=t0, token=lease.token, fence=lease.fence, name=lease.name, res=res, detail=detail[:200])


# -- recording fencelock calls --------------------------------------------------------------------


ACTOR: contextvars.ContextVar[str] = contextvars.ContextVar("stress_actor", default="")
ERRORS: dict[str, int] = {}
"""Backend errors per actor since its last operation (the actor backs off when it sees one)."""


def _classify(err: BaseException) -> dict[str, Any]:
    if isinstance(err, fencelock.BackendError):
        actor = ACTOR.get()
        ERRORS[actor] = ERRORS.get(actor, 0) + 1
    documented = isinstance(err, (FenceLockError, asyncio.CancelledError))
    out: dict[str, Any] = {
        "out": "cancelled" if isinstance(err, asyncio.CancelledError) else "err",
        "exc": type(err).__name__,
        "msg": str(err)[:300],
        "documented": documented,
    }
    if not documented:
        out["tb"] = "".join(traceback.format_exception(type(err), err, err.__traceback__))[-4000:]
    return out


def _prim(spec: dict[str, Any]) -> dict[str, Any]:
    """What a call on a coordination primitive adds to its ``call`` event (nothing for a mutex)."""
    prim = spec.get("prim", "lock")
    return {} if prim == "lock" else {"prim": prim, "limit": spec.get("limit", 1)}


def _lease_fields(lease: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "token": lease.token,
        "fence": lease.fence,
        "deadline": lease.deadline,
        "ttl": spec["ttl_eff"],
        "renew": spec["renew"],
        "col": spec.get("col", False),
        "obj": id(lease),  # one token can come back in two Lease objects (a re-granted acquire)
    }


# -- sync actor -----------------------------------------------------------------------------------


class SyncActor:
    def __init__(self, cfg: dict[str, Any], name: str, locks: list[tuple[Any, dict[str, Any]]], rng: random.Random):
        self.cfg = cfg
        self.actor = name
        self.locks = locks
        self.rng = rng

    def call(self, op: str, lock_name: str, fn: Callable[[], Any], **fields: Any) -> tuple[bool, Any]:
        cid = new_id("c")
        emit("call", cid=cid, op=op, name=lock_name, api="sync", actor=self.actor, **fields)
        try:
            value = fn()
        except BaseException as err:
            emit("ret", cid=cid, **_classify(err))
            if isinstance(err, (KeyboardInterrupt, SystemExit)):
                raise
            return False, err
        emit("ret", cid=cid, out="ok")
        return True, value

    def run(self) -> None:
        ACTOR.set(self.actor)
        until = self.cfg["until"]
        for _ in range(self.cfg.get("max_ops", 400)):
            if now() >= until:
                return
            lock, spec = self.rng.choice(self.locks)
            r = self.rng.random()
            if ERRORS.pop(self.actor, 0):
                # the server was unreachable: back off a little, as an application would (and so
                # that a cut does not use up the actor's operations in a second)
                time.sleep(self.rng.uniform(0.05, 0.3))
            try:
                if r < 0.35:
                    self.op_acquire(lock, spec, self.rng.choice([0.0, 0.3, 1.0, 2.0, 4.0, 6.0]))
                elif r < 0.5:
                    self.op_try(lock, spec)
                elif r < 0.85 and spec.get("with", True):
                    self.op_with(lock, spec)
                elif r < 0.85:
                    self.op_acquire(lock, spec, spec["timeout"])  # an election has no with block
                else:
                    if spec.get("prim") == "elect":
                        self.op_leader(lock, spec)
                    time.sleep(self.rng.uniform(0.01, 0.2))
            except Exception as err:  # our own code: record, keep going
                emit("unexpected", where=f"sync actor {self.actor}", exc=type(err).__name__, tb=traceback.format_exc())

    def _granted(self, cid: str, lease: Any, spec: dict[str, Any]) -> None:
        emit("ret", cid=cid, out="ok", **_lease_fields(lease, spec))
        if MONITOR is not None:
            MONITOR.watch(lease)

    def op_leader(self, election: Any, spec: dict[str, Any], lease: Any = None) -> None:
        """``leader()``, recorded with its term (and, asked by a leader, with the asking lease)."""
        cid = new_id("c")
        asker = {} if lease is None else {"token": lease.token}
        emit("call", cid=cid, op="leader", name=election.name, api="sync", actor=self.actor, **asker, **_prim(spec))
        try:
            who = election.leader()
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            return
        emit("ret", cid=cid, out="ok", term=None if who is None else who.term, value=None if who is None else who.value)

    def op_acquire(self, lock: Any, spec: dict[str, Any], timeout: float) -> None:
        cid = new_id("c")
        emit("call", cid=cid, op="acquire", name=lock.name, ttl=lock.ttl, api="sync", actor=self.actor, timeout=timeout,
             **_prim(spec))
        try:
            lease = lock.acquire(timeout=timeout)
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            return
        self._granted(cid, lease, spec)
        try:
            self.hold(lease, spec)
        finally:
            emit("sect_end", token=lease.token, how="normal")
            self.release(lease)

    def op_try(self, lock: Any, spec: dict[str, Any]) -> None:
        cid = new_id("c")
        emit("call", cid=cid, op="try_acquire", name=lock.name, ttl=lock.ttl, api="sync", actor=self.actor, timeout=0,
             **_prim(spec))
        try:
            lease = lock.try_acquire()
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            return
        if lease is None:
            emit("ret", cid=cid, out="none")
            return
        self._granted(cid, lease, spec)
        try:
            self.hold(lease, spec)
        finally:
            emit("sect_end", token=lease.token, how="normal")
            self.release(lease)

    def op_with(self, lock: Any, spec: dict[str, Any]) -> None:
        cid = new_id("c")
        exit_cid: str | None = None
        timeout = lock._params.acquire_timeout
        emit("call", cid=cid, op="with", name=lock.name, ttl=lock.ttl, api="sync", actor=self.actor, timeout=timeout,
             **_prim(spec))
        lease = None
        try:
            with lock as lease:
                self._granted(cid, lease, spec)
                try:
                    self.hold(lease, spec)
                finally:
                    emit("sect_end", token=lease.token, how="normal")
                    exit_cid = new_id("c")
                    emit("call", cid=exit_cid, op="with_exit", name=lock.name, api="sync", actor=self.actor,
                         token=lease.token)
        except Exception as err:
            emit("ret", cid=exit_cid or cid, **_classify(err))
            if isinstance(err, LeaseLost) and lease is not None and exit_cid is not None:
                emit("sig", token=lease.token, kind="with_exit", fence=lease.fence)
        else:
            emit("ret", cid=exit_cid, out="ok")
        finally:
            if lease is not None and MONITOR is not None:
                MONITOR.done(lease)

    def release(self, lease: Any) -> None:
        ok, err = self.call("release", lease.name, lease.release, token=lease.token)
        if not ok and isinstance(err, LeaseLost):
            emit("sig", token=lease.token, kind="release", fence=lease.fence)
        if MONITOR is not None:
            MONITOR.done(lease)

    def hold(self, lease: Any, spec: dict[str, Any]) -> None:
        ttl = spec["ttl_eff"]
        for _ in range(self.rng.randint(0, 5)):
            r = self.rng.random()
            if r < 0.35:
                time.sleep(pick_sleep(self.rng, ttl, self.cfg['until']))
            elif r < 0.6:
                fenced_write(self.cfg["fence_db"], lease)
            elif r < 0.8 and self.rng.random() < 0.3 and (due := next_renewal(lease)) is not None:
                # a short extend sent just as the renewer sends its own: the two race on the server
                # and back on the client (which answer sets the deadline last?); then keep holding
                time.sleep(max(0.0, min(2.0, due - now() - self.rng.uniform(0.0, 0.002))))
                length = round(self.rng.uniform(0.2, 0.5), 3)
                ok, err = self.call("extend", lease.name, lambda n=length: lease.extend(ttl=n) or True,
                                    token=lease.token, ttl=length)
                if not ok and isinstance(err, LeaseLost):
                    emit("sig", token=lease.token, kind="extend", fence=lease.fence)
                time.sleep(self.rng.uniform(0.5, 1.5))  # long enough for a waiter to take the key
            elif r < 0.8:
                # one extend, or a burst of them racing the renewer (which may be mid-request)
                for _ in range(1 if self.rng.random() < 0.7 else self.rng.randint(3, 10)):
                    length = pick_extend(self.rng, ttl)
                    ok, err = self.call("extend", lease.name, lambda n=length: lease.extend(ttl=n) or True,
                                        token=lease.token, ttl=length)
                    if not ok:
                        if isinstance(err, LeaseLost):
                            emit("sig", token=lease.token, kind="extend", fence=lease.fence)
                        break
            else:
                check_held(lease)
                if "election" in spec:  # a leader asks who leads: itself, with its own term
                    self.op_leader(spec["election"], spec, lease)


def pick_sleep(rng: random.Random, ttl: float, until: float) -> float:
    r = rng.random()
    if r < 0.7:
        d = rng.uniform(0.01, 0.2)
    elif r < 0.93:
        d = rng.uniform(0.3, 1.0) * ttl
    else:
        d = rng.uniform(1.1, 2.0) * ttl  # past the TTL: renewal must carry it, or the loss be signalled
    # not much past the end of the run: the run waits for every worker to finish its last hold
    return max(0.01, min(d, until + 0.5 - now()))


def pick_extend(rng: random.Random, ttl: float) -> float | None:
    r = rng.random()
    if r < 0.4:
        return None
    if r < 0.8:
        return round(rng.uniform(0.2, 0.8), 3)  # shorter than the renewer's: the races that matter
    return round(ttl * rng.uniform(1.5, 3.0), 3)


def check_held(lease: Any) -> None:
    """Ask the library (locally) whether the lease is held; record its answer."""
    t0 = now()
    try:
        lease.ensure_held()
    except LeaseLost as err:
        kind = "doubt" if "in doubt" in str(err) else "ensure"
        emit("sig", token=lease.token, kind=kind, fence=lease.fence)
    except fencelock.NotHeld:
        pass
    except Exception as err:
        emit("unexpected", where="ensure_held", exc=type(err).__name__, tb=traceback.format_exc())
    else:
        emit("held", t0=t0, token=lease.token, how="ensure")
    t0 = now()
    if lease.lost:
        emit("sig", token=lease.token, kind="flag", fence=lease.fence)
    elif lease.in_doubt is None:
        emit("held", t0=t0, token=lease.token, how="flag")


# -- async actor ----------------------------------------------------------------------------------


async def _in_task(task_id: str, coro: Awaitable[Any]) -> Any:
    TASK.set(task_id)  # the task runs in a copy of the context: this stays the task's own
    return await coro


class AsyncActor:
    def __init__(self, cfg: dict[str, Any], name: str, locks: list[tuple[Any, dict[str, Any]]], rng: random.Random,
                 io: Callable[[], Awaitable[Any]]):
        self.cfg = cfg
        self.actor = name
        self.locks = locks
        self.rng = rng
        self.io = io

    async def call(self, op: str, lock_name: str, fn: Callable[[], Awaitable[Any]], **fields: Any) -> tuple[bool, Any]:
        cid = new_id("c")
        emit("call", cid=cid, op=op, name=lock_name, api="async", actor=self.actor, **fields)
        try:
            value = await fn()
        except asyncio.CancelledError as err:
            emit("ret", cid=cid, **_classify(err))
            raise
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            return False, err
        emit("ret", cid=cid, out="ok")
        return True, value

    async def run(self) -> None:
        ACTOR.set(self.actor)
        until = self.cfg["until"]
        for _ in range(self.cfg.get("max_ops", 400)):
            if now() >= until:
                return
            lock, spec = self.rng.choice(self.locks)
            r = self.rng.random()
            timeout = self.rng.choice([0.0, 0.3, 1.0, 2.0, 4.0, 6.0])
            cancel_at: float | None = None
            coro: Any
            if r < 0.25:
                coro = self.op_acquire(lock, spec, timeout, io=self.rng.random() < 0.5)
            elif r < 0.35:
                coro = self.op_try(lock, spec)
            elif r < 0.6:
                coro = self._with(lock, spec, io=self.rng.random() < 0.6)
            elif r < 0.8:
                # cancel an acquire: often right at its timeout, as it gives up and cleans up
                timeout = self.rng.choice([0.3, 1.0, 2.0])
                coro = self.op_acquire(lock, spec, timeout, io=False)
                if self.rng.random() < 0.6:
                    cancel_at = timeout + self.rng.uniform(-0.02, 0.05)
                else:
                    cancel_at = self.rng.uniform(0.0, timeout)
            elif r < 0.92:
                # cancel a holder (or a with block) at a random moment
                if self.rng.random() < 0.5:
                    coro = self._with(lock, spec, io=False)
                else:
                    coro = self.op_acquire(lock, spec, timeout, io=False)
                cancel_at = self.rng.uniform(0.0, 2.5)
            else:
                if spec.get("prim") == "elect":
                    await self.op_leader(lock, spec)
                await asyncio.sleep(self.rng.uniform(0.01, 0.2))
                continue
            if ERRORS.pop(self.actor, 0):
                await asyncio.sleep(self.rng.uniform(0.05, 0.3))
            what = coro.__qualname__
            task_id = new_id("k")
            task = asyncio.get_running_loop().create_task(_in_task(task_id, coro))
            try:
                if cancel_at is not None:
                    done, _ = await asyncio.wait({task}, timeout=max(0.0, cancel_at))
                    if not done:
                        sent = task.cancel()
                        emit("cancel", task=task_id, sent=sent, what=what)
                        await self._finish(task, task_id, True)
                        continue
                await self._finish(task, task_id, False)
            except asyncio.CancelledError:
                task.cancel()
                raise

    async def _finish(self, task: asyncio.Task[Any], task_id: str, cancelled: bool) -> None:
        done, _ = await asyncio.wait({task}, timeout=60)
        if not done:
            emit("task_end", task=task_id, how="hung")
            return
        if not cancelled:
            if not task.cancelled() and task.exception() is not None:
                err = task.exception()
                emit("unexpected", where=f"async op {self.actor}", exc=type(err).__name__,
                     tb="".join(traceback.format_exception(type(err), err, err.__traceback__)))
            return
        if task.cancelled():
            emit("task_end", task=task_id, how="cancelled")
        elif task.exception() is not None:
            err = task.exception()
            emit("task_end", task=task_id, how="raised", exc=type(err).__name__, msg=str(err)[:200])
        else:
            emit("task_end", task=task_id, how="returned")

    def _granted(self, cid: str, lease: Any, spec: dict[str, Any]) -> None:
        emit("ret", cid=cid, out="ok", **_lease_fields(lease, spec))
        if MONITOR is not None:
            MONITOR.watch(lease)

    def _with(self, lock: Any, spec: dict[str, Any], io: bool) -> Any:
        """``async with`` on the lock, or (an election has no with block) a campaign and a release."""
        if spec.get("with", True):
            return self.op_with(lock, spec, io=io)
        return self.op_acquire(lock, spec, spec["timeout"], io=io)

    async def op_leader(self, election: Any, spec: dict[str, Any], lease: Any = None) -> None:
        cid = new_id("c")
        asker = {} if lease is None else {"token": lease.token}
        emit("call", cid=cid, op="leader", name=election.name, api="async", actor=self.actor, **asker,
             **_prim(spec))
        try:
            who = await election.leader()
        except asyncio.CancelledError as err:
            emit("ret", cid=cid, **_classify(err))
            raise
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            return
        emit("ret", cid=cid, out="ok", term=None if who is None else who.term, value=None if who is None else who.value)

    async def op_acquire(self, lock: Any, spec: dict[str, Any], timeout: float, io: bool = False) -> None:
        cid = new_id("c")
        emit("call", cid=cid, op="acquire", name=lock.name, ttl=lock.ttl, api="async", actor=self.actor,
             timeout=timeout, **_prim(spec))
        try:
            lease = await lock.acquire(timeout=timeout)
        except asyncio.CancelledError as err:
            emit("ret", cid=cid, **_classify(err))
            raise
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            return
        self._granted(cid, lease, spec)
        how = "normal"
        try:
            await self.hold(lease, spec, io)
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            emit("sect_end", token=lease.token, how=how, col=spec.get("col", False))
            await self.release(lease)

    async def op_try(self, lock: Any, spec: dict[str, Any], *_: Any, io: bool = False) -> None:
        cid = new_id("c")
        emit("call", cid=cid, op="try_acquire", name=lock.name, ttl=lock.ttl, api="async", actor=self.actor, timeout=0,
             **_prim(spec))
        try:
            lease = await lock.try_acquire()
        except asyncio.CancelledError as err:
            emit("ret", cid=cid, **_classify(err))
            raise
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            return
        if lease is None:
            emit("ret", cid=cid, out="none")
            return
        self._granted(cid, lease, spec)
        how = "normal"
        try:
            await self.hold(lease, spec, io)
        except asyncio.CancelledError:
            how = "cancelled"
            raise
        finally:
            emit("sect_end", token=lease.token, how=how, col=spec.get("col", False))
            await self.release(lease)

    async def op_with(self, lock: Any, spec: dict[str, Any], *_: Any, io: bool = False) -> None:
        cid = new_id("c")
        exit_cid: str | None = None
        emit("call", cid=cid, op="with", name=lock.name, ttl=lock.ttl, api="async", actor=self.actor,
             timeout=lock._params.acquire_timeout, **_prim(spec))
        lease = None
        body_error: BaseException | None = None
        try:
            async with lock as lease:
                self._granted(cid, lease, spec)
                how = "normal"
                try:
                    await self.hold(lease, spec, io)
                except asyncio.CancelledError:
                    how = "cancelled"
                    raise
                except Exception as err:
                    # the section's own error (its I/O): it leaves the with block, but it is not
                    # fencelock's; asyncio.wait_for on Python <= 3.11 can turn a cancellation into one
                    how, body_error = "error", err
                    raise
                finally:
                    emit("sect_end", token=lease.token, how=how, col=spec.get("col", False))
                    exit_cid = new_id("c")
                    emit("call", cid=exit_cid, op="with_exit", name=lock.name, api="async", actor=self.actor,
                         token=lease.token)
        except asyncio.CancelledError as err:
            emit("ret", cid=exit_cid or cid, **_classify(err))
            raise
        except Exception as err:
            fields = _classify(err)
            if err is body_error:
                fields.update(documented=True, from_body=True)
                fields.pop("tb", None)
            emit("ret", cid=exit_cid or cid, **fields)
            if isinstance(err, LeaseLost) and lease is not None and exit_cid is not None:
                emit("sig", token=lease.token, kind="with_exit", fence=lease.fence)
        else:
            emit("ret", cid=exit_cid, out="ok")
        finally:
            if lease is not None and MONITOR is not None:
                MONITOR.done(lease)

    async def release(self, lease: Any) -> None:
        ok, err = await self.call("release", lease.name, lease.release, token=lease.token)
        if not ok and isinstance(err, LeaseLost):
            emit("sig", token=lease.token, kind="release", fence=lease.fence)
        if MONITOR is not None:
            MONITOR.done(lease)

    async def hold(self, lease: Any, spec: dict[str, Any], io: bool) -> None:
        ttl = spec["ttl_eff"]
        for _ in range(self.rng.randint(0, 5)):
            r = self.rng.random()
            if r < 0.35:
                d = pick_sleep(self.rng, ttl, self.cfg['until'])
                if io:
                    # the section does I/O with a timeout until d is over (what a real one does)
                    end = now() + d
                    for _ in range(10_000):
                        if now() >= end:
                            break
                        await self.io()
                else:
                    await asyncio.sleep(d)
            elif r < 0.6:
                await asyncio.to_thread(fenced_write, self.cfg["fence_db"], lease)
            elif r < 0.8 and self.rng.random() < 0.3 and (due := next_renewal(lease)) is not None:
                # a short extend sent just as the renewer sends its own (see the blocking twin)
                await asyncio.sleep(max(0.0, min(2.0, due - now() - self.rng.uniform(0.0, 0.002))))
                length = round(self.rng.uniform(0.2, 0.5), 3)

                async def ext_short(length: float = length) -> bool:
                    await lease.extend(ttl=length)
                    return True

                ok, err = await self.call("extend", lease.name, ext_short, token=lease.token, ttl=length)
                if not ok and isinstance(err, LeaseLost):
                    emit("sig", token=lease.token, kind="extend", fence=lease.fence)
                await asyncio.sleep(self.rng.uniform(0.5, 1.5))
            elif r < 0.8:
                for _ in range(1 if self.rng.random() < 0.7 else self.rng.randint(3, 10)):
                    length = pick_extend(self.rng, ttl)

                    async def ext(length: float | None = length) -> bool:
                        await lease.extend(ttl=length)
                        return True

                    ok, err = await self.call("extend", lease.name, ext, token=lease.token, ttl=length)
                    if not ok:
                        if isinstance(err, LeaseLost):
                            emit("sig", token=lease.token, kind="extend", fence=lease.fence)
                        break
            else:
                check_held(lease)
                if "election" in spec:
                    await self.op_leader(spec["election"], spec, lease)


# -- the process ----------------------------------------------------------------------------------


def make_specs(cfg: dict[str, Any], rng: random.Random, n: int) -> list[dict[str, Any]]:
    specs = []
    for i in range(n):
        ttl = rng.choice(cfg.get("ttls", [0.6, 1.0, 2.0, 4.0, 5.0]))
        renew: bool | float = rng.choice([True, True, False, 0.1])
        specs.append(
            {
                "name": rng.choice(cfg["names"]) if i >= len(cfg["names"]) else cfg["names"][i],
                "ttl": ttl,
                "ttl_eff": ttl,  # replaced by the lock's own once it exists (a backend may cap it)
                "renew": renew,
                "col": rng.random() < 0.5,
                "timeout": rng.choice([1.0, 3.0, 6.0]),
            }
        )
    return specs


class ElectionHandle:
    """An ``Election`` as the actors use a lock: ``acquire`` is ``campaign``, ``try_acquire`` is
    ``campaign(timeout=0)`` (its LockTimeout: somebody else leads), ``leader()`` as is."""

    def __init__(self, election: Any) -> None:
        self.election = election
        self.name = election.name
        self.ttl = election._lock.ttl
        self._params = election._lock._params

    def acquire(self, timeout: float | None = None) -> Any:
        return self.election.campaign(timeout)

    def try_acquire(self) -> Any:
        try:
            return self.election.campaign(0)
        except fencelock.LockTimeout:
            return None

    def leader(self) -> Any:
        return self.election.leader()


class AsyncElectionHandle(ElectionHandle):
    async def acquire(self, timeout: float | None = None) -> Any:
        return await self.election.campaign(timeout)

    async def try_acquire(self) -> Any:
        try:
            return await self.election.campaign(0)
        except fencelock.LockTimeout:
            return None

    async def leader(self) -> Any:
        return await self.election.leader()


def make_prims(cfg: dict[str, Any], rng: random.Random, api: str) -> tuple[list[tuple[Any, dict[str, Any]]], list[Any]]:
    """The coordination primitives of this worker (``cfg["prims"]``: names and the semaphore's
    limit, one per run): two semaphores, two read-write locks (readers listed twice: more readers
    than writers), two election candidates. Returns (handle, spec) pairs and what to close."""
    mod: Any = fencelock.aio if api == "async" else fencelock
    prims = cfg["prims"]
    out: list[tuple[Any, dict[str, Any]]] = []
    closers: list[Any] = []
    for i, spec in enumerate(make_specs(cfg, rng, 6)):
        kw: dict[str, Any] = {
            "ttl": spec["ttl"], "renew": spec["renew"], "timeout": spec["timeout"], "on_lost": on_lost,
        }
        if api == "async":
            kw["cancel_on_loss"] = spec["col"]
        else:
            spec["col"] = False
        url = _url(cfg, rng)
        if i < 2:
            sem = mod.Semaphore(prims["sem"], url, limit=prims["limit"], **kw)
            spec.update(name=sem.name, prim="sem", limit=prims["limit"], ttl_eff=sem.ttl)
            out.append((sem, spec))
            closers.append(sem)
        elif i < 4:
            rw = mod.ReadWriteLock(prims["rw"], url, **kw)
            for side, weight in (("read", 2), ("write", 1)):
                lock = rw.read() if side == "read" else rw.write()
                side_spec = {**spec, "name": rw.name, "prim": side, "ttl_eff": lock.ttl}
                out += [(lock, side_spec)] * weight
            closers.append(rw)
        else:
            election = mod.Election(prims["elect"], url, value=f"{os.getpid()}:{api}:{i}", **kw)
            handle = (AsyncElectionHandle if api == "async" else ElectionHandle)(election)
            spec.update(name=election.name, prim="elect", ttl_eff=handle.ttl, election=handle, **{"with": False})
            out.append((handle, spec))
            closers.append(election)
    return out, closers


def _url(cfg: dict[str, Any], rng: random.Random) -> str:
    return str(cfg["proxy_url"] if cfg.get("proxy_url") and rng.random() < cfg.get("proxy_share", 0.5) else cfg["url"])


async def async_main(cfg: dict[str, Any], rng: random.Random) -> None:
    if cfg.get("crowd"):
        await crowd(cfg, rng)
        return
    specs = make_specs(cfg, rng, cfg.get("async_locks", 4))
    locks: list[tuple[Any, dict[str, Any]]] = []
    for spec in specs:
        renew = spec["renew"]
        lock = fencelock.aio.Lock(
            spec["name"], _url(cfg, rng), ttl=spec["ttl"], renew=renew, timeout=spec["timeout"],
            on_lost=on_lost, cancel_on_loss=spec["col"],
        )
        spec["ttl_eff"] = lock.ttl
        locks.append((lock, spec))
    closers: list[Any] = [lock for lock, _ in locks]
    io = await make_io(cfg)
    actors = [
        AsyncActor(cfg, f"A{i}", locks, random.Random(f"{cfg['seed']}:{cfg['worker']}:A{i}"), io)
        for i in range(cfg.get("tasks", 4))
    ]
    if cfg.get("prims") and cfg.get("prim_tasks", 0):
        prims, more = make_prims(cfg, random.Random(f"{cfg['seed']}:{cfg['worker']}:prims:async"), "async")
        closers += more
        actors += [
            AsyncActor(cfg, f"Q{i}", prims, random.Random(f"{cfg['seed']}:{cfg['worker']}:Q{i}"), io)
            for i in range(cfg["prim_tasks"])
        ]
    await asyncio.gather(*(a.run() for a in actors), return_exceptions=True)
    for closer in closers:
        try:
            await asyncio.wait_for(closer.aclose(), 5)
        except Exception:
            pass


async def make_io(cfg: dict[str, Any]) -> Callable[[], Awaitable[Any]]:
    """One round of a critical section's own I/O: a redis.asyncio command with a socket timeout
    on Redis (the path where asyncio can drop a cancellation), else a ``wait_for`` of a short sleep."""
    if cfg.get("io_redis_url"):
        import redis.asyncio as aredis

        client = aredis.Redis.from_url(cfg["io_redis_url"], socket_timeout=2, socket_connect_timeout=1)
        key = f"stress:io:{os.getpid()}"

        async def redis_io() -> None:
            try:
                await client.incr(key)
            except aredis.RedisError:
                await asyncio.sleep(0.01)

        return redis_io

    async def sleep_io() -> None:
        # the section's own I/O timing out (its process was frozen or starved past the 1 s) is the
        # section's business, as a real one handles it: not an error escaping fencelock
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.sleep(0.002), 1.0)

    return sleep_io


async def crowd(cfg: dict[str, Any], rng: random.Random) -> None:
    """Take ``crowd_name`` and hold it; queue ``crowd`` waiters behind; wait to be killed."""
    name = cfg["crowd_name"]
    lock = fencelock.aio.Lock(name, cfg["url"], ttl=cfg.get("crowd_ttl", 5.0), renew=True, timeout=8.0,
                              on_lost=on_lost)
    spec = {"ttl_eff": lock.ttl, "renew": True, "col": False}
    actor = AsyncActor(cfg, "crowd", [(lock, spec)], rng, make_noop())
    held = asyncio.Event()
    holder = asyncio.get_running_loop().create_task(_crowd_hold(actor, lock, spec, cfg["until"], held))
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(held.wait(), 10.0)  # queue behind our own holder (bounded)
    waiters = [asyncio.get_running_loop().create_task(_crowd_wait(actor, lock, spec)) for _ in range(cfg["crowd"])]
    await asyncio.wait([holder, *waiters], timeout=max(0.0, cfg["until"] - now()))


def make_noop() -> Callable[[], Awaitable[None]]:
    async def noop() -> None:
        await asyncio.sleep(0.01)

    return noop


async def _crowd_hold(actor: AsyncActor, lock: Any, spec: dict[str, Any], until: float, held: asyncio.Event) -> None:
    for _ in range(5):  # a server restart or a cut may get in the way: try again (bounded)
        cid = new_id("c")
        emit("call", cid=cid, op="acquire", name=lock.name, ttl=lock.ttl, api="async", actor="crowd", timeout=10.0)
        try:
            lease = await lock.acquire(timeout=10.0)
            break
        except Exception as err:
            emit("ret", cid=cid, **_classify(err))
            if not isinstance(err, fencelock.BackendError):
                return
            await asyncio.sleep(0.2)
    else:
        return
    actor._granted(cid, lease, spec)
    held.set()
    await asyncio.sleep(max(0.0, min(30.0, until - now())))
    emit("sect_end", token=lease.token, how="normal")
    await actor.release(lease)


async def _crowd_wait(actor: AsyncActor, lock: Any, spec: dict[str, Any]) -> None:
    cid = new_id("c")
    emit("call", cid=cid, op="acquire", name=lock.name, ttl=lock.ttl, api="async", actor="crowd", timeout=8.0)
    try:
        lease = await lock.acquire(timeout=8.0)
    except Exception as err:
        emit("ret", cid=cid, **_classify(err))
        return
    actor._granted(cid, lease, spec)
    emit("sect_end", token=lease.token, how="normal")
    await actor.release(lease)


def sync_main(cfg: dict[str, Any], rng: random.Random) -> list[threading.Thread]:
    specs = make_specs(cfg, rng, cfg.get("sync_locks", 4))
    shared = []
    for s in specs:
        lock = fencelock.Lock(s["name"], _url(cfg, rng), ttl=s["ttl"], renew=s["renew"], timeout=s["timeout"],
                              on_lost=on_lost)
        s["ttl_eff"] = lock.ttl  # a backend may cap the TTL (ZooKeeper: the session timeout)
        shared.append((lock, s))
    actors = [
        SyncActor(cfg, f"T{i}", shared, random.Random(f"{cfg['seed']}:{cfg['worker']}:T{i}"))
        for i in range(cfg.get("threads", 3))
    ]
    if cfg.get("prims") and cfg.get("prim_threads", 0):
        prims, _ = make_prims(cfg, random.Random(f"{cfg['seed']}:{cfg['worker']}:prims:sync"), "sync")
        actors += [
            SyncActor(cfg, f"P{i}", prims, random.Random(f"{cfg['seed']}:{cfg['worker']}:P{i}"))
            for i in range(cfg["prim_threads"])
        ]
    threads = []
    for actor in actors:

        def run(actor: SyncActor = actor) -> None:
            try:
                actor.run()
            except BaseException as err:
                emit("unexpected", where=f"thread {actor.actor}", exc=type(err).__name__, tb=traceback.format_exc())

        th = threading.Thread(target=run, name=f"stress-{actor.actor}", daemon=True)
        th.start()
        threads.append(th)
    return threads


def main(cfg: dict[str, Any]) -> None:
    """Entry point of a worker process (multiprocessing spawn target)."""
    global REC, MONITOR
    if cfg.get("stderr"):
        # fencelock's warnings and asyncio's "exception in callback" reports go to a file beside the history
        fd = os.open(cfg["stderr"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 2)
        os.close(fd)
    REC = Recorder(cfg["history"])
    rng = random.Random(f"{cfg['seed']}:{cfg['worker']}")
    emit("start", worker=cfg["worker"], inject=cfg.get("inject", []), crowd=cfg.get("crowd", 0))
    from fencelock._async.lock import AsyncLease
    from fencelock._sync.lock import Lease

    install_deadline_probe(Lease)
    install_deadline_probe(AsyncLease)
    if "spawn_fail" in cfg.get("inject", []):
        inject_spawn_failure(random.Random(f"{cfg['seed']}:{cfg['worker']}:inject"))
    MONITOR = Monitor()
    code = 0
    try:
        threads = [] if cfg.get("crowd") else sync_main(cfg, rng)
        asyncio.run(async_main(cfg, rng))
        for th in threads:
            th.join(max(0.0, cfg["until"] + 40 - now()))
        time.sleep(0.3)  # let the monitor see the last signals
        emit("stop")
    except BaseException as err:
        emit("unexpected", where="worker main", exc=type(err).__name__, tb=traceback.format_exc())
        code = 1
    finally:
        MONITOR.stop()
        REC.close()
        # no interpreter shutdown: kazoo/redis threads of abandoned locks must not delay the exit
        os._exit(code)
