"""Operator commands: ``fencelock run``, ``fencelock status`` and ``fencelock release``.

``run`` is fencelock's ``flock(1)`` / ``etcdctl lock``: it waits (bounded) for the lock, runs a
command while renewing the lease, hands the command its fence and token in the environment,
forwards signals, releases the lock when the command ends and returns the command's exit status.

Exit codes of ``run`` (also shown by ``fencelock run --help``); any other code is the command's own:

    64  bad usage (unknown option, missing argument, bad URL, bad --confirm)
    69  the lock server could not be reached (refused, timed out, TLS handshake failed), or
        its replicas did not acknowledge the grant (``wait_replicas``)
    75  the lock was not obtained within --timeout (someone else held it throughout)
    77  the lock server refused our credentials or the command (wrong password, missing ACL)
    79  the lease was lost while the command ran (with --kill-on-loss it was terminated)
    126 the command was found but could not be executed (no ``#!`` line, no execute bit, a
        directory); 127 the command was not found. The lock is released and nothing runs.
    128+N the command was killed by signal N (as a shell reports it), or signal N arrived before
          the command started (while waiting for the lock, or just after the grant: the lock is
          then released)

Every way out of ``run`` after the grant releases the lock, so a failed start never leaves the
lock held until its TTL.

The command runs in its own process group (as under ``timeout(1)``): a signal that fencelock gets
(SIGINT, SIGTERM, SIGHUP) is forwarded once to that whole group, and on a lost lease the whole
group is terminated, shell pipelines included. The command therefore does not own the terminal: it
should not read from it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext, suppress
from types import FrameType
from typing import Any, NoReturn

import click

from ._core.params import DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_TTL, default_label
from ._errors import (
    AuthenticationFailed,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    ConfigurationError,
    LeaseLost,
    LockTimeout,
)
from ._sync.lock import Lease, Lock
from ._sync.primitives import Election, Semaphore
from .backends import open_backend, url_help
from .backends.base import RW_LIMIT, Attempt, Backend, ForceReleases, KnowsLastFence, Passthrough
from .backends.redis import ReplicationUnconfirmed

__all__ = [
    "COMMANDS",
    "ENDING_SIGNALS",
    "EXIT_AUTH",
    "EXIT_CANNOT_EXECUTE",
    "EXIT_LEASE_LOST",
    "EXIT_NOT_FOUND",
    "EXIT_TIMEOUT",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "SignalGuard",
    "Terminated",
    "cleanup_shield",
    "elect",
    "ended_by_signals",
    "plural",
    "say",
    "release",
    "run",
    "status",
]

log = logging.getLogger("fencelock")

EXIT_USAGE = 64
EXIT_UNAVAILABLE = 69
EXIT_TIMEOUT = 75
EXIT_AUTH = 77
EXIT_LEASE_LOST = 79
EXIT_CANNOT_EXECUTE = 126
EXIT_NOT_FOUND = 127

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

EXIT_CODES_HELP = """\b
Exit status: the command's own, or
  64  bad usage (options, arguments, lock URL)
  69  lock server unreachable (refused, timed out, TLS failed),
      or its replicas did not acknowledge (wait_replicas)
  75  lock not obtained within --timeout
  77  credentials or ACL refused by the lock server
  79  lease lost while the command ran
  126 command found but not executable (no #! line, no x bit),
      127 command not found (the lock is released either way)
  128+N  command killed by signal N, or signal N before it started"""


class _Exit(Exception):
    """Leave with this exit status after printing ``message`` on stderr."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def _check_kill_grace(seconds: float) -> None:
    """A number of seconds from 0 to an hour: nan would compare false everywhere, inf would never
    send the SIGKILL (every wait is bounded)."""
    if not 0 <= seconds <= 3600:  # False for nan
        _fail(EXIT_USAGE, f"--kill-grace must be a number of seconds from 0 to 3600, got {seconds:g}")


def _fail(code: int, message: str) -> NoReturn:
    raise _Exit(code, message)


def _exit_for(err: BaseException) -> int:
    """fencelock's error tree, mapped onto the documented exit codes."""
    if isinstance(err, LockTimeout):
        return EXIT_TIMEOUT
    if isinstance(err, ReplicationUnconfirmed):  # replicas unreachable, not a permission problem
        return EXIT_UNAVAILABLE
    if isinstance(err, (AuthenticationFailed, BackendRejected)):
        return EXIT_AUTH
    if isinstance(err, BackendUnavailable):
        return EXIT_UNAVAILABLE
    if isinstance(err, LeaseLost):
        return EXIT_LEASE_LOST
    if isinstance(err, ConfigurationError):
        return EXIT_USAGE
    return EXIT_UNAVAILABLE


@contextmanager
def _reported() -> Iterator[None]:
    """Turn fencelock errors into a one-line message on stderr and the documented exit status."""
    try:
        yield
    except _Exit as done:
        if done.message:
            click.echo(f"fencelock: {done.message}", err=True)
        sys.exit(done.code)
    except (BackendError, ConfigurationError, LockTimeout, LeaseLost) as err:
        click.echo(f"fencelock: {err}", err=True)
        sys.exit(_exit_for(err))


def _backend_spec(url: str, tls_ca: str | None, tls_cert: str | None, tls_key: str | None) -> Any:
    """The URL as is, or, with TLS file options, a Redis backend built with them."""
    if not (tls_ca or tls_cert or tls_key):
        return url
    if not url.startswith("rediss://"):
        _fail(EXIT_USAGE, "--tls-ca/--tls-cert/--tls-key need a rediss:// lock URL")
    from .backends.redis import RedisBackend

    kwargs: dict[str, Any] = {}
    if tls_ca:
        kwargs["ssl_ca_certs"] = tls_ca
    if tls_cert:
        kwargs["ssl_certfile"] = tls_cert
    if tls_key:
        kwargs["ssl_keyfile"] = tls_key
    return RedisBackend.from_url(url, **kwargs)


def _lock_options(fn: Any) -> Any:
    """Options every command shares: where the lock lives and how to reach it."""
    for option in reversed(
        [
            click.option(
                "--lock",
                "url",
                required=True,
                envvar="FENCELOCK_LOCK",
                metavar="URL",
                help=f"Lock backend URL ({url_help()}); env FENCELOCK_LOCK keeps a password out of the process list.",
            ),
            click.option("--tls-ca", type=click.Path(dir_okay=False), help="CA bundle for rediss://."),
            click.option("--tls-cert", type=click.Path(dir_okay=False), help="Client certificate for rediss://."),
            click.option("--tls-key", type=click.Path(dir_okay=False), help="Client key for rediss://."),
        ]
    ):
        fn = option(fn)
    return fn


# -- signals that end a command ---------------------------------------------------------------

ENDING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Ctrl-C, ``kill``/``timeout(1)``/a CI cancel, a closed terminal: each must stop what we started."""


class Terminated(BaseException):
    """One of ``ENDING_SIGNALS`` arrived. A BaseException (like KeyboardInterrupt), so that
    ``except Exception`` on the way out does not swallow it, while every ``finally`` and context
    manager runs and stops the processes and servers that were started."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def signame(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class SignalGuard:
    """Raises ``Terminated`` for the first ending signal, in the main thread; later ones (a second
    Ctrl-C while we clean up) are only noted, so they cannot cut the cleanup short. Inside
    ``shield()`` (a cleanup section) a signal is held back and raised when the section ends."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._raised = False
        self._shielded = 0

    def handle(self, signum: int, frame: FrameType | None) -> None:
        self.received.append(signum)
        if self._raised or self._shielded:
            return
        self._raised = True
        raise Terminated(signum)

    @contextmanager
    def shield(self) -> Iterator[None]:
        self._shielded += 1
        try:
            yield
        finally:
            self._shielded -= 1
            if not self._shielded and self.received and not self._raised:
                self._raised = True
                raise Terminated(self.received[0])


_guard: SignalGuard | None = None


@contextmanager
def ended_by_signals() -> Iterator[SignalGuard]:
    """Within the block, SIGINT, SIGTERM and SIGHUP raise ``Terminated`` (see ``SignalGuard``);
    the previous handlers come back afterwards. Only in the main thread (where Python runs signal
    handlers); elsewhere the block runs unguarded."""
    global _guard
    guard = SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {sig: signal.signal(sig, guard.handle) for sig in ENDING_SIGNALS}
    outer, _guard = _guard, guard
    try:
        yield guard
    finally:
        _guard = outer
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def cleanup_shield() -> Any:
    """A cleanup section that an ending signal must not interrupt (see ``SignalGuard.shield``)."""
    return _guard.shield() if _guard is not None else nullcontext()


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 file``, ``2 files``, ``0 files`` (``many`` for irregular plurals: ``plural(n, "lease")``
    is fine, ``plural(n, "was", "were")`` too)."""
    return f"{count:,} {word if count == 1 else (many or word + 's')}"


def say(message: str) -> None:
    """One line on stderr; quiet if stderr is gone (SIGHUP: the terminal was closed)."""
    with suppress(OSError, ValueError):
        click.echo(message, err=True)


# -- run -----------------------------------------------------------------------------------------


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@_lock_options
@click.option("--ttl", type=float, default=DEFAULT_TTL, show_default=True, help="Lease length in seconds.")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_ACQUIRE_TIMEOUT,
    show_default=True,
    help="Seconds to wait for the lock (0: one attempt).",
)
@click.option(
    "--kill-on-loss/--no-kill-on-loss",
    default=True,
    show_default=True,
    help="Terminate the command if the lease is lost while it runs.",
)
@click.option(
    "--kill-grace",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when terminating on loss.",
)
@click.option("--label", default=None, help="Holder label shown by `status` (default hostname:pid).")
@click.option(
    "--limit",
    type=int,
    default=None,
    metavar="N",
    help="Hold one of N permits of a semaphore named NAME instead of the lock (at most N commands at once; "
    "every client of NAME must use the same N).",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def run(
    name: str,
    url: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    ttl: float,
    timeout: float,
    kill_on_loss: bool,
    kill_grace: float,
    label: str | None,
    limit: int | None,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND while holding lock NAME: `fencelock run NAME --lock URL -- COMMAND [ARGS...]`.

    Waits at most --timeout for the lock (with --limit N: for one of N permits), renews the lease
    every ttl/3 while the command runs, and releases it when the command ends. The command finds
    FENCELOCK_NAME, FENCELOCK_FENCE (pass it to storage that checks fences) and FENCELOCK_TOKEN in
    its environment. SIGINT, SIGTERM and SIGHUP are forwarded to its process group. If the lease is
    lost, fencelock says so on stderr and (with --kill-on-loss) terminates the command: SIGTERM,
    then SIGKILL after --kill-grace seconds.
    """
    with _reported():
        _check_kill_grace(kill_grace)
        holder = label or default_label()

        def make(backend: Backend) -> Lock:
            if limit is None:
                return Lock(name, backend, ttl=ttl, timeout=timeout, label=holder)
            return Semaphore(name, backend, limit=limit, ttl=ttl, timeout=timeout, label=holder)

        code = _run_under(make, url, tls_ca, tls_cert, tls_key, holder, timeout, list(command), kill_on_loss,
                          kill_grace)
    sys.exit(code)


def _run_under(
    make: Any,
    url: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    holder: str,
    timeout: float,
    command: list[str],
    kill_on_loss: bool,
    kill_grace: float,
) -> int:
    """Open the backend, make the lock (``make(backend)``) on it through the grant watcher, run."""
    spec = _backend_spec(url, tls_ca, tls_cert, tls_key)
    backend, owned = open_backend(spec)
    owned = owned or not isinstance(spec, str)  # the TLS backend was made here for this run
    granted = [False]
    try:
        lock = make(_GrantWatch(backend, granted))
        return _run_locked(lock, granted, holder, timeout, command, kill_on_loss, kill_grace)
    finally:
        if owned:
            try:
                backend.close()
            except BackendError:  # pragma: no cover - closing our own connection pool
                pass


@click.command(epilog=EXIT_CODES_HELP)
@click.argument("name")
@_lock_options
@click.option("--value", required=True, help="What the others see of this candidate while it leads (address, id).")
@click.option("--ttl", type=float, default=DEFAULT_TTL, show_default=True, help="Lease length of the leadership.")
@click.option(
    "--timeout",
    type=float,
    default=DEFAULT_ACQUIRE_TIMEOUT,
    show_default=True,
    help="Seconds to wait to become leader (a standby waiting its turn wants a long one: every wait is bounded).",
)
@click.option(
    "--kill-grace",
    type=float,
    default=5.0,
    show_default=True,
    help="Seconds between SIGTERM and SIGKILL when leadership is lost.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def elect(
    name: str,
    url: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    value: str,
    ttl: float,
    timeout: float,
    kill_grace: float,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND only while this candidate leads election NAME: `fencelock elect NAME --value V --lock URL -- CMD`.

    Campaigns for at most --timeout, then runs the command as leader; FENCELOCK_FENCE is the term
    (pass it to storage that checks fences, so a deposed leader's late writes are refused). If
    leadership is lost (the lease could not be renewed), the command is terminated: SIGTERM, then
    SIGKILL after --kill-grace seconds, exit 79. When the command ends, leadership is resigned.
    `fencelock status NAME` shows the leader (its value) and the term.
    """
    with _reported():
        _check_kill_grace(kill_grace)

        def make(backend: Backend) -> Lock:
            return Election(name, backend, value=value, ttl=ttl, timeout=timeout)._lock

        code = _run_under(make, url, tls_ca, tls_cert, tls_key, value, timeout, list(command), True, kill_grace)
    sys.exit(code)


class _Interrupted(BaseException):
    """A forwarded signal arrived while we were still waiting for the lock."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


PAUSE_AFTER_GRANT_ENV = "_FENCELOCK_TEST_PAUSE_AFTER_GRANT"
"""Test hook: when set to a path, ``run`` creates that file right after the grant and waits (at
most a minute) for a signal before it starts the command, so a test can land a signal exactly
between the two. Not for users: it only delays the command."""


class _GrantWatch(Passthrough):
    """The lock's backend, passed through, that notes the moment a grant reaches us.

    From then on a signal must no longer be raised into the lock handle (it would unwind past a
    lease nobody releases): it is only recorded, and ``_run_locked`` releases the lease and starts
    nothing. Until then, raising is safe: an exception inside the acquire makes the handle give up
    whatever the server granted (its cleanup passes the lock on). The note is taken inside the
    handle's acquire, so no bytecode of ours runs between the grant and the switch."""

    def __init__(self, inner: Backend, granted: list[bool]) -> None:
        super().__init__(inner)
        self._granted = granted

    def try_acquire(
        self, key: str, token: str, ttl_ms: int, label: str, queue: bool, limit: int = 1, weight: int = 1
    ) -> Attempt:
        attempt = super().try_acquire(key, token, ttl_ms, label, queue, limit, weight)
        if attempt.fence is not None:
            self._granted[0] = True
        return attempt

    def wait(self, key: str, token: str, timeout: float) -> int | None:
        fence = super().wait(key, token, timeout)
        if fence is not None:
            self._granted[0] = True
        return fence


def _exec_failure(command: str, err: OSError) -> tuple[int, str]:
    """Exit status and one line for a command the kernel refused to start (as a shell reports it:
    126 found but cannot execute, 127 not found)."""
    why = err.strerror or str(err)
    if isinstance(err, FileNotFoundError):
        where = "" if "/" in command else " on PATH"
        return EXIT_NOT_FOUND, f"command not found{where}: {command} ({why}); not started, lock released"
    if err.errno == errno.ENOEXEC:
        hint = "a script needs a first line like #!/bin/sh naming its interpreter"
    elif isinstance(err, PermissionError) and os.path.isfile(command):
        hint = f"make it executable (chmod +x {command}) or run it through its interpreter"
    elif isinstance(err, (PermissionError, IsADirectoryError)) and os.path.isdir(command):
        hint = "it is a directory"
    else:
        hint = "check the file"
    return EXIT_CANNOT_EXECUTE, f"cannot execute {command}: {why} ({hint}); not started, lock released"


def _pause_after_grant(received: list[int]) -> None:
    path = os.environ.get(PAUSE_AFTER_GRANT_ENV)
    if not path:
        return
    with open(path, "w"):
        pass
    end = time.monotonic() + 60
    while not received and time.monotonic() < end:
        time.sleep(0.01)


def _run_locked(
    lock: Lock, granted: list[bool], holder: str, timeout: float, command: list[str], kill_on_loss: bool, grace: float
) -> int:
    """Acquire, run, release; returns the exit status ``run`` documents.

    Every way out after the grant releases the lease (the ``finally`` below): the command could
    not start, a signal came before it started, or anything unexpected."""
    received: list[int] = []
    # granted[0] is set by _GrantWatch inside the acquire (see there)
    started = [False]  # the command runs: signals are forwarded to it
    child: subprocess.Popen[bytes] | None = None

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if not granted[0]:
            # Ends the wait; the lock handle's cleanup leaves the queue (and passes on a lock that
            # was handed to us meanwhile) before the exception reaches us.
            raise _Interrupted(signum)
        received.append(signum)
        if started[0] and child is not None:
            _signal_group(child, signum)

    previous = {sig: signal.getsignal(sig) for sig in FORWARDED}
    for sig in FORWARDED:
        signal.signal(sig, on_signal)
    lease: Lease | None = None
    released = False
    try:
        try:
            lease = lock.acquire(timeout)
        except _Interrupted as stop:
            name = signal.Signals(stop.signum).name
            _fail(128 + stop.signum, f"{name} while waiting for lock {lock.name!r}; not started")
        _pause_after_grant(received)
        if received:
            name = signal.Signals(received[0]).name
            _release_quietly(holder, lease)
            released = True
            _fail(128 + received[0], f"{name} after lock {lock.name!r} was granted; command not started, lock released")
        log.info("running %r under lock %r fence=%d holder=%s", command[0], lock.name, lease.fence, holder)
        env = dict(os.environ)
        env.pop(PAUSE_AFTER_GRANT_ENV, None)
        env.update(
            FENCELOCK_NAME=lock.name,
            FENCELOCK_FENCE=str(lease.fence),
            FENCELOCK_TOKEN=lease.token,
        )
        try:
            child = _spawn(command, env)
        except OSError as err:
            _release_quietly(holder, lease)
            released = True
            _fail(*_exec_failure(command[0], err))
        started[0] = True
        for signum in received:  # arrived while the command was being started
            _signal_group(child, signum)
        lost_during = _supervise(child, lease, kill_on_loss, grace)
        status = child.returncode
        code = 128 - status if status < 0 else status
        released = True  # from here on, each path below releases (or reports why it could not)
        if lost_during is not None:
            _release_quietly(holder, lease)
            click.echo(
                f"fencelock: exiting with {EXIT_LEASE_LOST} (lease lost); the command's own status was {code}",
                err=True,
            )
            return EXIT_LEASE_LOST
        try:
            lease.release()
        except LeaseLost as err:
            click.echo(f"fencelock: {err}; the command had already ended with status {code}", err=True)
            return EXIT_LEASE_LOST
        except BackendError as err:
            # The command finished while the lease was held (renewal was fine until then); the lock
            # now ends by its TTL instead.
            click.echo(f"fencelock: could not release {lock.name!r}, it expires by its ttl: {err}", err=True)
        return code
    finally:
        if lease is not None and not released:
            _release_quietly(holder, lease)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _spawn(command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Start the command as the leader of its own process group (so signals reach all of it)."""
    if sys.version_info >= (3, 11):
        return subprocess.Popen(command, env=env, process_group=0)
    return subprocess.Popen(command, env=env, preexec_fn=os.setpgrp)  # pragma: no cover - 3.10


def _supervise(child: subprocess.Popen[bytes], lease: Lease, kill_on_loss: bool, grace: float) -> str | None:
    """Wait for the command to end; on a lost lease, report it (and kill). Returns the loss reason.

    A lease *in doubt* (ZooKeeper: connection suspended, the session may still live) is reported
    but not acted on: it either recovers or becomes a loss."""
    lost: str | None = None
    kill_at: float | None = None
    doubt: str | None = None
    while child.poll() is None:
        now_doubt = lease.in_doubt
        if lost is None and now_doubt != doubt:
            if now_doubt is not None:
                click.echo(f"fencelock: lease on {lease.name!r} (fence {lease.fence}) in doubt: {now_doubt}", err=True)
            else:
                click.echo(f"fencelock: lease on {lease.name!r} (fence {lease.fence}) no longer in doubt", err=True)
            doubt = now_doubt
        if lost is None and lease.lost_event.wait(0.05):
            lost = lease.lost_reason or "lost"
            action = "terminating the command (SIGTERM)" if kill_on_loss else "the command keeps running"
            click.echo(
                f"fencelock: LEASE LOST on {lease.name!r} (fence {lease.fence}) while the command ran: "
                f"{lost}; {action}",
                err=True,
            )
            if kill_on_loss:
                _signal_group(child, signal.SIGTERM)
                kill_at = time.monotonic() + grace
        elif lost is not None:
            try:
                child.wait(0.05)
            except subprocess.TimeoutExpired:
                pass
        if kill_at is not None and child.poll() is None and time.monotonic() >= kill_at:
            click.echo(f"fencelock: command still running {grace:g} s after SIGTERM: SIGKILL", err=True)
            _signal_group(child, signal.SIGKILL)
            kill_at = None
    if lost is None and lease.lost:
        lost = lease.lost_reason or "lost"
        click.echo(f"fencelock: LEASE LOST on {lease.name!r} (fence {lease.fence}): {lost}", err=True)
    return lost


def _signal_group(child: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(child.pid, signum)
    except ProcessLookupError:  # already gone
        pass
    except PermissionError:  # pragma: no cover - the group leader changed identity
        child.send_signal(signum)


def _release_quietly(holder: str, lease: Lease) -> None:
    try:
        lease.release()
    except (LeaseLost, BackendError) as err:
        log.info("release of %r fence=%d holder=%s after loss: %s", lease.name, lease.fence, holder, err)


# -- status --------------------------------------------------------------------------------------


@click.command(epilog="""\b
Exit status:
  0   shown (held or free)
  64  bad usage (options, arguments, lock URL)
  69  lock server unreachable
  77  credentials or ACL refused by the lock server""")
@click.argument("name")
@_lock_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object on stdout.")
def status(name: str, url: str, tls_ca: str | None, tls_cert: str | None, tls_key: str | None, as_json: bool) -> None:
    """Show who holds NAME: a lock's holder (an election's leader and term), a semaphore's permits
    and their holders, a read-write lock's readers or writer; fences, time left and waiters."""
    with _reported():
        lock = Lock(name, _backend_spec(url, tls_ca, tls_cert, tls_key))
        try:
            info = lock.inspect()
            last_fence = lock.backend.last_fence(name) if isinstance(lock.backend, KnowsLastFence) else None
        finally:
            lock.close()
    data: dict[str, Any] = {"name": name, "backend": lock.backend.name, "held": info is not None}
    if info is not None:
        data.update(fence=info.fence, holder=info.holder, ttl_remaining=info.ttl_remaining, waiters=info.waiters)
        data["kind"] = _kind(info.limit)
        data["limit"] = info.limit
        data["holders"] = [
            {"fence": h.fence, "holder": h.holder, "ttl_remaining": h.ttl_remaining, "weight": h.weight}
            for h in info.holders
        ]
    data["last_fence"] = last_fence
    if as_json:
        click.echo(json.dumps(data, sort_keys=True))
        return
    if info is None:
        click.echo(f"{name}: free (backend {data['backend']})")
    elif info.limit == 1:
        waiters = "unknown" if info.waiters is None else str(info.waiters)
        click.echo(f"{name}: held by {info.holder or '?'}, fence {info.fence} (as an election: leader "
                   f"{info.holder or '?'}, term {info.fence}), {_left(info.ttl_remaining)}, waiters {waiters}")
    else:
        holders = info.holders or ()
        waiters = "unknown" if info.waiters is None else str(info.waiters)
        if info.limit >= RW_LIMIT:
            writer = [h for h in holders if h.weight >= RW_LIMIT]
            what = "held by a writer" if writer else f"held by {plural(len(holders), 'reader')}"
        else:
            what = f"{len(holders)} of {info.limit} permits held"
        click.echo(f"{name}: {data['kind']}, {what}, waiters {waiters}")
        for h in holders:
            role = ("writer" if h.weight >= RW_LIMIT else "reader") if info.limit >= RW_LIMIT else "permit"
            click.echo(f"  {role} {h.holder or '?'}, fence {h.fence}, {_left(h.ttl_remaining)}")
    if last_fence is not None:
        click.echo(f"  last fence issued: {last_fence}")


def _kind(limit: int) -> str:
    if limit >= RW_LIMIT:
        return "read-write lock"
    return "lock" if limit == 1 else f"semaphore of {limit}"


def _left(ttl_remaining: float | None) -> str:
    if ttl_remaining is None:
        return "ends with the holder's session or lease (not known to others)"
    return f"{ttl_remaining:.3f} s left"


# -- release -------------------------------------------------------------------------------------


@click.command(epilog="""\b
Exit status:
  0   removed, or it was already free
  64  bad usage (options, arguments, lock URL, --force or --confirm missing)
  69  lock server unreachable
  77  credentials or ACL refused by the lock server""")
@click.argument("name")
@_lock_options
@click.option("--force", is_flag=True, help="Required: this breaks someone else's lock.")
@click.option("--confirm", metavar="NAME", default=None, help="The lock name typed again, exactly.")
def release(
    name: str,
    url: str,
    tls_ca: str | None,
    tls_cert: str | None,
    tls_key: str | None,
    force: bool,
    confirm: str | None,
) -> None:
    """Operator override: remove lock NAME whoever holds it (--force --confirm NAME).

    The holder is not told: it finds out at its next renewal (its lease is then lost), and its
    writes carry an older fence than the next owner's, so fenced storage refuses them.
    """
    with _reported():
        if not force:
            _fail(EXIT_USAGE, "refusing without --force: this removes another process's lock")
        if confirm != name:
            _fail(EXIT_USAGE, f"--confirm must repeat the lock name exactly ({name!r}); got {confirm!r}")
        lock = Lock(name, _backend_spec(url, tls_ca, tls_cert, tls_key))
        try:
            backend = lock.backend
            if not isinstance(backend, ForceReleases):
                _fail(EXIT_USAGE, f"the {backend.name} backend cannot force-release a lock")
            # What we remove, as the backend describes it (backends return different things from
            # force_release, and Redis's includes the holder's token, which we never print).
            info = lock.inspect()
            removed = backend.force_release(name)
        finally:
            lock.close()
    if removed is None:
        click.echo(f"{name}: was not held; nothing removed")
        log.warning("force release of %r: it was not held, nothing removed", name)
        return
    fence = "?" if info is None else str(info.fence)
    holder = "?" if info is None or not info.holder else info.holder
    click.echo(f"{name}: removed the lock held by {holder} with fence {fence}")
    log.warning("force release of %r: removed the lock fence=%s holder=%s", name, fence, holder)


COMMANDS = [run, elect, status, release]
