"""Redis backend: the protocol as Lua scripts, key naming, URL parsing, error translation.

The I/O classes are ``fencelock._async.redis.AsyncRedisBackend`` and its generated blocking twin
``fencelock._sync.redis.RedisBackend``; they only call the scripts below.

Keys of one lock (all share one hash tag, so Redis Cluster puts them in one slot):

    {prefix}{<name>}:lock          STRING "<token>:<fence>:<label>", with PX = the lease
    {prefix}{<name>}:fence         STRING the last fence issued (no expiry; never decreases)
    {prefix}{<name>}:queue         ZSET   waiting tokens, scored by arrival (server microseconds)
    {prefix}{<name>}:alive         HASH   waiting token -> "<alive until, server ms>|<ttl ms>|<label>"
    {prefix}{<name>}:lock:wake:<t> LIST   handoff notice for waiter <t> (it BLPOPs on it)

``<name>`` is the lock name with ``%``, ``{`` and ``}`` percent-encoded, so any name (spaces,
newlines, braces, non-ASCII) maps to its own hash tag and cannot reach another lock's keys. The
name travels only as key data, never into a script's source.

Fences. Each fence is ``max(last + 1, TIME in microseconds)`` where ``last`` is the counter key. The
counter alone would restart at 1 after Redis loses its data (restart without persistence, failover
to a replica that missed the write, restore of an older snapshot); the clock term restarts it above
every fence issued before. **Assumption**: when the counter is lost or rolled back, the server's
clock (``TIME``) reads later than it did when the last fence was issued; i.e. the clock did not step
backwards by more than the time elapsed since then. NTP slewing never does that; a manual clock
reset across a data loss could. While the counter survives, the clock may do anything: fences still
grow by at least one. Fences are integers below 2**53 (exact in Lua's doubles) until the year 2255.

Waiting (first come, first served). A contender that must wait enqueues its token in ``queue``. A
free lock is granted only to the first *live* waiter (or anyone when the queue is empty), so newcomers
cannot barge past waiters. ``release`` hands the lock straight to the first live waiter: it mints
that waiter's fence, sets the lock to its token for the waiter's own TTL, and pushes the fence to its
``wake`` list; the waiter's BLPOP returns and it holds the lock with no further round trip (its lease
is measured from before its previous poll, which is before the grant). A waiter refreshes its
``alive`` stamp each time it polls (at least every ``BLOCK_CAP`` seconds); one that stopped
refreshing for ``REGISTRATION_MS`` (crashed) is skipped and dropped. Dropping is bounded work (at
most 256 dead entries a call, so a crowd of crashed waiters cannot stall the server); when a call runs
out of that budget the head is *unknown*, which is never taken for "empty": ACQUIRE then grants
nobody and answers ``QUEUE_UNSETTLED`` so the waiter polls again at once, and RELEASE frees the lock
for the live waiters' next polls. A grant always removes the grantee's own entry, so a finished holder
can never be handed the lock again. How strict: FIFO among live waiters by arrival at the server. A
waiter that dies within ``REGISTRATION_MS`` of being handed the lock holds it, like any crashed
holder, until its TTL runs out.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from .._errors import (
    AuthenticationFailed,
    BackendError,
    BackendRejected,
    BackendUnavailable,
    ConfigurationError,
    ReplicationUnconfirmed,
)

__all__ = [
    "ABANDON",
    "ACQUIRE",
    "BLOCK_CAP",
    "DEFAULT_PREFIX",
    "EXTEND",
    "INSPECT",
    "QUEUE_UNSETTLED",
    "RELEASE",
    "RedisKeys",
    "ReplicationUnconfirmed",
    "check_wait_replicas",
    "map_errors",
    "parse_redis_url",
]

DEFAULT_PREFIX = "fencelock:"

BLOCK_CAP = 0.5
"""Longest single BLPOP, in seconds. Short, because redis-py resends a blocking command that
outlives the socket timeout (default 5 s in redis-py 8), and because each poll refreshes the
waiter's ``alive`` stamp."""

REGISTRATION_MS = 2000
"""How long a waiter counts as alive after its last poll (four polls missed = gone)."""

QUEUE_UNSETTLED = -3
"""ACQUIRE's "busy" reply when the lock is free but the queue still held more crashed waiters than
one call clears (256): the head is not known yet, so nobody may take the lock; poll again at once."""

_PREAMBLE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- next fence: max(last + 1, server clock in us); stored before it is returned
local function mint(fence_key, now)
  local f = (tonumber(redis.call('GET', fence_key) or '0') or 0) + 1
  if now > f then f = now end
  local s = string.format('%.0f', f)
  redis.call('SET', fence_key, s)
  return s
end
local HEAD_BATCH, HEAD_BATCHES = 64, 4
local function owns(value, token)
  return value and string.sub(value, 1, #token + 1) == token .. ':'
end
-- The first waiter still alive, and its "<alive until>|<ttl ms>|<label>". Drops dead waiters on the
-- way, in batches, at most HEAD_BUDGET of them a call (bounded server time). Returns h, reg for a
-- live head; nil when the queue is empty; false when the budget ran out first: the head is not
-- known yet, which is NOT the same as an empty queue (a live waiter may stand behind the dead ones).
local function head(queue, alive, now_ms)
  for _ = 1, HEAD_BATCHES do
    local batch = redis.call('ZRANGE', queue, 0, HEAD_BATCH - 1)
    if #batch == 0 then return nil end
    local dead = {}
    local found, found_reg = nil, nil
    for _, h in ipairs(batch) do
      local reg = redis.call('HGET', alive, h)
      if reg and (tonumber(string.match(reg, '^(%d+)')) or 0) > now_ms then
        found, found_reg = h, reg
        break
      end
      dead[#dead + 1] = h
    end
    if #dead > 0 then
      redis.call('ZREM', queue, unpack(dead))
      redis.call('HDEL', alive, unpack(dead))
    end
    if found then return found, found_reg end
  end
  return false
end
-- release the lock held by `token`: hand it to the first live waiter (for that waiter's TTL, under
-- its label), else delete it. returns 0 (not ours: nothing changed), 1 (deleted), 2 (handed over)
local function release(lock, fence_key, queue, alive, token)
  if not owns(redis.call('GET', lock), token) then return 0 end
  if redis.call('EXISTS', queue) == 0 then
    redis.call('DEL', lock)
    return 1
  end
  local now = now_us()
  local h, reg = head(queue, alive, math.floor(now / 1000))
  if not h then
    -- nobody waits, or the head is not known yet (more crashed waiters than one call clears): free
    -- the lock; the live waiters' next polls take it, in order (ACQUIRE goes on clearing)
    redis.call('DEL', lock)
    return 1
  end
  local _, ttl, label = string.match(reg, '^(%d+)|(%d+)|(.*)$')
  local f = mint(fence_key, now)
  redis.call('SET', lock, h .. ':' .. f .. ':' .. label, 'PX', ttl)
  redis.call('ZREM', queue, h)
  redis.call('HDEL', alive, h)
  local wake = lock .. ':wake:' .. h
  redis.call('DEL', wake)
  redis.call('RPUSH', wake, f)
  redis.call('PEXPIRE', wake, ttl)
  return 2
end
"""

ACQUIRE = (
    _PREAMBLE
    + """
-- ACQUIRE: one round trip: SET NX PX and mint the fence.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue, KEYS[4] alive
-- ARGV[1] token, ARGV[2] ttl ms, ARGV[3] holder label, ARGV[4] '1' to queue when busy,
-- ARGV[5] waiter registration ms
-- returns {1, fence} when granted (also when the lock was handed to us meanwhile),
--         {0, pttl}  when busy (pttl of the holder's key in ms; -2 when free but others wait first;
--                    -3 when free but the queue's head is not known yet: poll again at once)
local token = ARGV[1]
local cur = redis.call('GET', KEYS[1])
local busy = nil
if cur then
  if owns(cur, token) then
    local f = string.match(string.sub(cur, #token + 2), '^(%d+)')
    redis.call('SET', KEYS[1], token .. ':' .. f .. ':' .. ARGV[3], 'PX', ARGV[2])
    redis.call('DEL', KEYS[1] .. ':wake:' .. token)
    return {1, f}
  end
else
  local now = now_us()
  local queued = redis.call('EXISTS', KEYS[3]) == 1
  local h = nil
  if queued then h = head(KEYS[3], KEYS[4], math.floor(now / 1000)) end
  if h == false then
    busy = -3
  elseif (not h) or h == token then
    local f = mint(KEYS[2], now)
    redis.call('SET', KEYS[1], token .. ':' .. f .. ':' .. ARGV[3], 'PX', ARGV[2])
    if queued then
      -- our own entry always goes, wherever it stands: a grantee left in the queue would later be
      -- handed the lock again after it finished
      redis.call('ZREM', KEYS[3], token)
      redis.call('HDEL', KEYS[4], token)
    end
    return {1, f}
  end
end
if ARGV[4] == '1' then
  local now = now_us()
  redis.call('ZADD', KEYS[3], 'NX', now, token)
  redis.call('HSET', KEYS[4], token, (math.floor(now / 1000) + tonumber(ARGV[5])) .. '|' .. ARGV[2] .. '|' .. ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
end
return {0, busy or redis.call('PTTL', KEYS[1])}
"""
)

EXTEND = """
-- EXTEND: reset the lease to ARGV[2] ms from now, only if we still hold it.
-- KEYS[1] lock; ARGV[1] token, ARGV[2] ttl ms
-- returns 1 when extended, 0 when the lock is gone or held by another token
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

RELEASE = (
    _PREAMBLE
    + """
-- RELEASE: delete-if-token-matches, or hand the lock to the first live waiter.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue, KEYS[4] alive
-- ARGV[1] token
-- returns 0 when the lock was not ours (expired; maybe taken): nothing is changed;
--         1 when deleted; 2 when handed over to the next waiter
return release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
"""
)

ABANDON = (
    _PREAMBLE
    + """
-- ABANDON: a waiter gives up (timeout, cancellation, error): leave the queue, and if the lock was
-- handed to us (or granted by a request whose answer we never read), pass it on.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue, KEYS[4] alive
-- ARGV[1] token
-- returns what RELEASE returns (0 when we held nothing)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('DEL', KEYS[1] .. ':wake:' .. ARGV[1])
return release(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1])
"""
)

INSPECT = """
-- INSPECT: who holds the lock.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue
-- returns {value or false, pttl ms, number of queued waiters, last fence or false}
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]), redis.call('ZCARD', KEYS[3]),
        redis.call('GET', KEYS[2])}
"""


def _tag(name: str) -> str:
    # Percent-encode only what could break the hash tag or the encoding itself: injective, readable.
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


class RedisKeys:
    """Key names of one lock (see the module docstring)."""

    __slots__ = ("alive", "fence", "lock", "queue")

    def __init__(self, prefix: str, name: str) -> None:
        base = f"{prefix}{{{_tag(name)}}}:"
        self.lock = base + "lock"
        self.fence = base + "fence"
        self.queue = base + "queue"
        self.alive = base + "alive"

    def all4(self) -> list[str]:
        return [self.lock, self.fence, self.queue, self.alive]

    def wake(self, token: str) -> str:
        return f"{self.lock}:wake:{token}"


def check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
        raise ConfigurationError(
            f"key prefix must be a string without braces (they would change the hash tag), got {prefix!r}"
        )
    return prefix


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


def parse_redis_url(url: str) -> tuple[str, dict[str, str]]:
    """Split ``redis://...?prefix=app:`` into the URL redis-py understands and fencelock's own options.

    Everything redis-py would only complain about at the first connection (an unknown option, a
    port that is not a number, a db that is not an integer) raises ``ConfigurationError`` here,
    naming the bad part and what is accepted; so do bad values of fencelock's own options."""
    parts = urlsplit(url)
    scheme = parts.scheme
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
    return (base + "?" + urlencode(theirs) if theirs else base), ours


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


def _translate(err: Exception, what: str) -> BackendError | None:
    from redis import exceptions as rex

    if isinstance(err, rex.AuthenticationError):
        return AuthenticationFailed(f"redis refused our credentials during {what}: {err}")
    if isinstance(err, (rex.ConnectionError, rex.TimeoutError, rex.BusyLoadingError, OSError)):
        return BackendUnavailable(f"redis unreachable during {what}: {err}")
    if isinstance(err, rex.ResponseError):
        msg = str(err)
        if "WRONGPASS" in msg or "NOAUTH" in msg or "invalid password" in msg.lower():
            return AuthenticationFailed(f"redis refused our credentials during {what}: {msg}")
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
