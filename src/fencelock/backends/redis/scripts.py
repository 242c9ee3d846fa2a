"""The Redis protocol as Lua scripts: what each takes (KEYS, ARGV) and returns is written above it.

Key layout, fences and the waiting rules are described in the package docstring
(``fencelock.backends.redis``); the names in the scripts follow it. Two layouts share one name's
keys: the mutex (limit 1: the ``lock`` STRING) and counted leases (``permits``, ``holders``,
``leases``, ``cqueue``, ``calive``). ACQUIRE serves the mutex, ACQUIRE_COUNTED the rest; EXTEND,
RELEASE, ABANDON and INSPECT find a token's lease in either layout by the token alone.

The scripts of the mutex path take only the mutex's four keys and derive the counted ones from
KEYS[1] (``counted_keys``), as they already derive the wake lists: every extra key an EVALSHA
carries costs the mutex's hot path client time, and a derived key keeps the hash tag, so the slot.
"""

from __future__ import annotations

import hashlib

__all__ = [
    "ABANDON",
    "ACQUIRE",
    "ACQUIRE_COUNTED",
    "BLOCK_CAP",
    "DEFAULT_PREFIX",
    "FENCE_KEEP_MS",
    "EXTEND",
    "FORCE_COUNTED",
    "GRANT_BUDGET",
    "INSPECT",
    "LIMIT_MISMATCH",
    "Lua",
    "QUEUE_UNSETTLED",
    "REGISTRATION_MS",
    "RELEASE",
]

DEFAULT_PREFIX = "fencelock:"

BLOCK_CAP = 0.5
"""Longest single BLPOP, in seconds. Short, because redis-py resends a blocking command that
outlives the socket timeout (default 5 s in redis-py 8), and because each poll refreshes the
waiter's ``alive`` stamp."""

REGISTRATION_MS = 2000
"""How long a waiter counts as alive after its last poll (four polls missed = gone)."""

FENCE_KEEP_MS = 86_400_000
"""How long a name's fence counter outlives the last lease minted from it (24 hours past that
lease's TTL). After that an idle name costs nothing in Redis; the next fence is then the server's
clock in microseconds, which is above every fence issued before unless the clock stepped back by
more than the time since (the assumption a lost counter already relies on: see the package
docstring). While the counter lives, fences grow by at least one whatever the clock does."""

QUEUE_UNSETTLED = -3
"""ACQUIRE's "busy" reply when the lock is free but the queue still held more crashed waiters than
one call clears (256): the head is not known yet, so nobody may take the lock; poll again at once.
Counted leases answer it too when a call could not clear every expired holder, or had handed over
``GRANT_BUDGET`` grants already."""

LIMIT_MISMATCH = -1
"""First element of an ACQUIRE reply refusing a request whose limit differs from the name's
(the second element: the name's limit, 1 for a mutex)."""

GRANT_BUDGET = 256
"""Most grants one counted call hands over (a writer's release letting a crowd of readers in): the
rest of those that fit get in at their next poll, so no single call holds the server for long."""

_PREAMBLE = """
if redis.replicate_commands then redis.replicate_commands() end
local function now_us()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
-- next fence: max(last + 1, server clock in us); stored before it is returned, kept for the
-- lease's ttl ms plus FENCE_KEEP_MS (see the package docstring: an idle name's memory). `last`:
-- the last fence when the caller knows it; else it is read by the SET that stores the clock
-- (SET ... GET: one call; before Redis 6.2, which lacks it, a GET and a SET)
local function mint(fence_key, now, ttl, last)
  local keep = ttl + FENCE_KEEP_MS_VALUE
  local s = string.format('%.0f', now)
  local stored = false
  if last == nil then
    last = redis.pcall('SET', fence_key, s, 'PX', keep, 'GET')
    if type(last) == 'table' then last = redis.call('GET', fence_key) else stored = true end
    last = tonumber(last or '0') or 0
  end
  if last + 1 > now then
    s = string.format('%.0f', last + 1)
    stored = false
  end
  if not stored then redis.call('SET', fence_key, s, 'PX', keep) end
  return s
end
local HEAD_BATCH, HEAD_BATCHES = 64, 4
local function owns(value, token)
  return value and string.sub(value, 1, #token + 1) == token .. ':'
end
-- The first waiter still alive (its registration key `<lock>:reg:<token>` has not expired), and that
-- registration, "<ttl ms>|<label>". Drops dead waiters on the way, in batches, at most
-- HEAD_BATCH * HEAD_BATCHES of them a call (bounded server time). `batch`: the queue's first
-- HEAD_BATCH entries when the caller already read them. Returns h, reg for a live head; nil when the
-- queue is empty; false when the budget ran out first: the head is not known yet, which is NOT the
-- same as an empty queue (a live waiter may stand behind the dead ones).
local function head(queue, lock, batch)
  for _ = 1, HEAD_BATCHES do
    if batch == nil then batch = redis.call('ZRANGE', queue, 0, HEAD_BATCH - 1) end
    if #batch == 0 then return nil end
    local dead = {}
    local found, found_reg = nil, nil
    for _, h in ipairs(batch) do
      local reg = redis.call('GET', lock .. ':reg:' .. h)
      if reg then
        found, found_reg = h, reg
        break
      end
      dead[#dead + 1] = h
    end
    if #dead > 0 then redis.call('ZREM', queue, unpack(dead)) end
    if found then return found, found_reg end
    batch = nil
  end
  return false
end
""".replace("FENCE_KEEP_MS_VALUE", str(FENCE_KEEP_MS))

# Counted leases. A name's state: permits {limit, used}; holders token -> lease end (ms, server
# clock); leases token -> "<lease end ms>|<fence>|<weight>|<label>"; cqueue/calive the waiters, as
# the mutex's queue/alive but registered as "<alive until>|<ttl ms>|<weight>|<label>". `used` is the
# weight of the entries in holders (expired ones included until they are dropped): it can only
# overstate what is held, so a call that could not drop every expired holder grants too little,
# never too much. The lifetimes: holders, leases and permits are kept at least as long as their
# longest lease, permits also as long as a waiter's registration; so when every user is gone the
# keys go too, and the name is idle.
_COUNTED_FUNCS = """
local DEAD_BUDGET, GRANT_BUDGET = 256, GRANT_BUDGET_VALUE
local function n0(x) return string.format('%.0f', x) end
-- the counted keys of a name from its lock key: "<base>lock" -> "<base>permits", ... (keys.py)
local function counted_keys(lock)
  local base = string.sub(lock, 1, -5)
  return {permits = base .. 'permits', holders = base .. 'holders', leases = base .. 'leases',
          queue = base .. 'cqueue', alive = base .. 'calive'}
end
-- lengthen k's expiry to at least ms (never shorten it: another holder may need it longer)
local function keep(k, ms)
  if redis.call('PTTL', k) < ms then redis.call('PEXPIRE', k, ms) end
end
-- the name's limit (nil: idle) and the weight its holders take
local function load(c)
  local st = {limit = tonumber(redis.call('HGET', c.permits, 'limit') or ''), used = 0, dirty = false, ttl = 0}
  if redis.call('EXISTS', c.holders) == 1 then
    st.used = tonumber(redis.call('HGET', c.permits, 'used') or '0') or 0
  end
  return st
end
local function save(c, st)
  if st.dirty then redis.call('HSET', c.permits, 'used', n0(math.max(st.used, 0))) end
  if st.ttl > 0 then keep(c.holders, st.ttl); keep(c.leases, st.ttl); keep(c.permits, st.ttl) end
end
-- the lease `token` holds, if it is still running: fence, weight, label
local function lease_of(c, token, now_ms)
  local v = redis.call('HGET', c.leases, token)
  if not v then return nil end
  local e, f, w, label = string.match(v, '^(%d+)|(%d+)|(%d+)|(.*)$')
  if (tonumber(e) or 0) <= now_ms then return nil end
  return f, tonumber(w), label
end
-- drop holders whose lease ran out, at most DEAD_BUDGET; true when none was left behind
local function purge(c, st, now_ms)
  local gone = redis.call('ZRANGE', c.holders, '-inf', n0(now_ms), 'BYSCORE', 'LIMIT', 0, DEAD_BUDGET)
  if #gone == 0 then return true end
  for _, t in ipairs(gone) do
    local v = redis.call('HGET', c.leases, t)
    if v then st.used = st.used - (tonumber(string.match(v, '^%d+|%d+|(%d+)|')) or 0) end
  end
  redis.call('ZREM', c.holders, unpack(gone))
  redis.call('HDEL', c.leases, unpack(gone))
  st.dirty = true
  return #gone < DEAD_BUDGET
end
-- head() for the counted queue, with one budget `b.n` of dead entries for the whole script (a
-- handoff asks for the head many times): h, reg; nil when empty; false when the budget ran out
local function chead(c, now_ms, b)
  while true do
    local batch = redis.call('ZRANGE', c.queue, 0, HEAD_BATCH - 1)
    if #batch == 0 then return nil end
    local dead = {}
    local found, found_reg = nil, nil
    for _, h in ipairs(batch) do
      local reg = redis.call('HGET', c.alive, h)
      if reg and (tonumber(string.match(reg, '^(%d+)')) or 0) > now_ms then
        found, found_reg = h, reg
        break
      end
      if b.n <= 0 then break end
      dead[#dead + 1] = h
      b.n = b.n - 1
    end
    if #dead > 0 then
      redis.call('ZREM', c.queue, unpack(dead))
      redis.call('HDEL', c.alive, unpack(dead))
    end
    if found then return found, found_reg end
    if b.n <= 0 then return false end
  end
end
-- grant `token` `w` permits for `ttl` ms under `label`: mints its fence (returned)
local function cgrant(c, st, fence_key, now, token, w, ttl, label)
  local f = mint(fence_key, now, ttl)
  local e = n0(math.floor(now / 1000) + ttl)
  redis.call('ZADD', c.holders, e, token)
  redis.call('HSET', c.leases, token, e .. '|' .. f .. '|' .. n0(w) .. '|' .. label)
  st.used, st.dirty = st.used + w, true
  if ttl > st.ttl then st.ttl = ttl end
  return f
end
-- Hand the free permits to the live waiters at the head of the queue, in order, as many as fit (at
-- most b.g): each gets its fence, its entry removed and, but for `me` (the caller, whose fence is
-- returned), a wake list with the fence. Stops at the first waiter that does not fit: nobody
-- overtakes it. Returns mine (or nil), how many were handed, and why it stopped: 'empty', 'blocked'
-- (the head does not fit) or 'unknown' (out of budget: the head is not known yet).
local function handoff(c, st, fence_key, lock, now, b, me)
  local now_ms = math.floor(now / 1000)
  local mine, handed = nil, 0
  while true do
    -- nothing free: nobody can fit, so the queue is left alone (a full name's polls stay cheap)
    if st.used >= st.limit then return mine, handed, 'blocked' end
    if b.g <= 0 then return mine, handed, 'unknown' end
    local h, reg = chead(c, now_ms, b)
    if h == false then return mine, handed, 'unknown' end
    if not h then return mine, handed, 'empty' end
    local _, ttl, w, label = string.match(reg, '^(%d+)|(%d+)|(%d+)|(.*)$')
    w, ttl = tonumber(w), tonumber(ttl)
    if st.used + w > st.limit then return mine, handed, 'blocked' end
    local f = cgrant(c, st, fence_key, now, h, w, ttl, label)
    redis.call('ZREM', c.queue, h)
    redis.call('HDEL', c.alive, h)
    handed, b.g = handed + 1, b.g - 1
    if h == me then
      mine = f
    else
      local wake = lock .. ':wake:' .. h
      redis.call('DEL', wake)
      redis.call('RPUSH', wake, f)
      redis.call('PEXPIRE', wake, ttl)
    end
  end
end
-- Release `token`'s counted lease and hand the freed permits on; with `settle`, hand over even when
-- we held nothing (a waiter leaving may let those behind it in). Returns 0 (held nothing), 1
-- (released), 2 (released and handed on). A name left with no holder and no waiter goes idle.
local function crelease(c, fence_key, lock, token, settle)
  if not settle and not redis.call('HGET', c.leases, token) then return 0 end
  local now = now_us()
  local now_ms = math.floor(now / 1000)
  local f, w = lease_of(c, token, now_ms)
  if not f and not settle then return 0 end
  local st = load(c)
  if f then
    redis.call('ZREM', c.holders, token)
    redis.call('HDEL', c.leases, token)
    st.used, st.dirty = st.used - w, true
  end
  local handed = 0
  if st.limit then
    purge(c, st, now_ms)
    local _
    _, handed = handoff(c, st, fence_key, lock, now, {n = DEAD_BUDGET, g = GRANT_BUDGET}, nil)
  end
  if redis.call('EXISTS', c.holders, c.queue) == 0 then
    redis.call('DEL', c.permits, c.leases)
  else
    save(c, st)
  end
  if not f then return 0 end
  return handed > 0 and 2 or 1
end
-- Is the name in counted use (a live holder or a live waiter)? Returns its limit; QUEUE_UNSETTLED
-- when that is not known yet (more to clear than one call may); nil after deleting what was left of
-- a use that is over.
local function counted_in_use(c, now_ms)
  local st = load(c)
  local verdict = nil
  if not purge(c, st, now_ms) then
    verdict = -3
  elseif redis.call('EXISTS', c.holders) == 1 then
    verdict = st.limit or 0
  else
    local h = chead(c, now_ms, {n = DEAD_BUDGET})
    if h == false then verdict = -3 elseif h then verdict = st.limit or 0 end
  end
  if verdict then
    save(c, st)
    return verdict
  end
  redis.call('DEL', c.permits, c.holders, c.leases, c.queue, c.alive)
  return nil
end
""".replace("GRANT_BUDGET_VALUE", str(GRANT_BUDGET))

# The mutex's scripts define the counted functions inside the branch that needs them (where a
# mutex lease is not found, or the free path finds counted state): a function a script defines at
# its top level is rebuilt on every call, and a dozen of them measured +1.5-3 us of server time per
# EVALSHA; inside a branch they cost nothing until it runs.
_RELEASE_FN = (
    """
-- release the lock held by `token`, in whichever layout: the mutex's is handed to the first live
-- waiter (for that waiter's TTL, under its label), else deleted. returns 0 (not ours: nothing
-- changed), 1 (released), 2 (handed over); `settle` as for crelease. `cur` and `queued`: what the
-- caller already read of the lock and of the queue's first HEAD_BATCH entries (nil: read them here)
local function release(lock, fence_key, queue, token, settle, cur, batch)
  if cur == nil then cur = redis.call('GET', lock) end
  if not owns(cur, token) then
    -- a lost mutex lease lands here too: answer it without building the counted functions
    if not settle and not redis.call('HGET', string.sub(lock, 1, -5) .. 'leases', token) then return 0 end
"""
    + _COUNTED_FUNCS
    + """
    return crelease(counted_keys(lock), fence_key, lock, token, settle)
  end
  if batch == nil then batch = redis.call('ZRANGE', queue, 0, HEAD_BATCH - 1) end
  if #batch == 0 then
    redis.call('DEL', lock)
    return 1
  end
  local h, reg = head(queue, lock, batch)
  if not h then
    -- nobody waits, or the head is not known yet (more crashed waiters than one call clears): free
    -- the lock; the live waiters' next polls take it, in order (ACQUIRE goes on clearing)
    redis.call('DEL', lock)
    return 1
  end
  local ttl, label = string.match(reg, '^(%d+)|(.*)$')
  -- the holder's fence is the last one minted for the name (while the mutex is held nothing else
  -- mints: a counted request meets LimitMismatch), so the counter need not be read
  local f = mint(fence_key, now_us(), tonumber(ttl), tonumber(string.match(string.sub(cur, #token + 2), '^(%d+)')))
  redis.call('SET', lock, h .. ':' .. f .. ':' .. label, 'PX', ttl)
  redis.call('ZREM', queue, h)
  -- h's registration is left to expire (REGISTRATION_MS; nothing reads it once h left the queue).
  -- Its wake list is empty here: a notice is popped by h's BLPOP, deleted by h's next ACQUIRE (which
  -- finds the lock its own) or by ABANDON, or expires with the lease it announced (the same PX, set
  -- by the same script, so at the same instant); and h is handed a lock only from the queue, which
  -- it re-enters only through ACQUIRE. So no DEL before the RPUSH.
  local wake = lock .. ':wake:' .. h
  redis.call('RPUSH', wake, f)
  redis.call('PEXPIRE', wake, ttl)
  return 2
end
"""
)

# The common case of ACQUIRE and RELEASE comes first in their scripts, before any function is
# defined: a function defined at a script's top level is a closure made on every call (the
# preamble's cost about 2 us of server time per EVALSHA), and the uncontended acquire and release
# need none of them. Lua only makes a closure when the line that defines it runs.
_ACQUIRE_FAST = """
-- ACQUIRE: the mutex (limit 1, weight 1). One round trip: SET NX PX and mint the fence.
-- KEYS[1] lock (the fence counter, the queue and the counted keys are derived from it, by the
-- suffixes of keys.py: every key or argument an EVALSHA carries costs the client about 1.5 us to
-- encode, on every call); ARGV[1] token, ARGV[2] ttl ms, ARGV[3] holder label, ARGV[4] '1' to
-- queue when busy
-- returns {1, fence} when granted (also when the lock was handed to us meanwhile),
--         {0, pttl}  when busy (pttl of the holder's key in ms; -2 when free but others wait first;
--                    -3 when free but the queue's head is not known yet: poll again at once),
--         {-1, limit} when the name is in counted use with that limit: nothing changed
local token = ARGV[1]
local base = string.sub(KEYS[1], 1, -5)
local fence_key, queue_key = base .. 'fence', base .. 'queue'
local cur = redis.call('GET', KEYS[1])
-- free, nobody queued, no counted use (one EXISTS for both): mint the fence (as mint() below) and take it
if not cur and redis.call('EXISTS', queue_key, base .. 'permits') == 0 then
  if redis.replicate_commands then redis.replicate_commands() end
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local keep = tonumber(ARGV[2]) + FENCE_KEEP_MS_VALUE
  local s = string.format('%.0f', now)
  -- store the clock and read the last fence in one call; a counter ahead of the clock (a burst, or
  -- a clock that stepped back) is stored again: the fence is max(last + 1, now)
  local last = redis.pcall('SET', fence_key, s, 'PX', keep, 'GET')
  local stored = type(last) ~= 'table'  -- an error table: before Redis 6.2 (no SET ... GET)
  if not stored then last = redis.call('GET', fence_key) end
  last = tonumber(last or '0') or 0
  if last + 1 > now then
    s = string.format('%.0f', last + 1)
    stored = false
  end
  if not stored then redis.call('SET', fence_key, s, 'PX', keep) end
  redis.call('SET', KEYS[1], token .. ':' .. s .. ':' .. ARGV[3], 'PX', ARGV[2])
  return {1, s}
end
""".replace("FENCE_KEEP_MS_VALUE", str(FENCE_KEEP_MS))

ACQUIRE = (
    _ACQUIRE_FAST
    + _PREAMBLE
    + """
-- ACQUIRE, every other case: the lock is held (maybe by us), or waiters or a counted use exist
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
  -- one EXISTS for the queue and the counted state (permits): both absent is the common case
  local permits = base .. 'permits'
  local present = redis.call('EXISTS', queue_key, permits)
  local queued = false
  if present > 0 then
    queued = redis.call('EXISTS', queue_key) == 1
    if present > (queued and 1 or 0) then
      -- the limit binds while the counted use has a live holder or waiter
      local limit = nil
      do
"""
    + _COUNTED_FUNCS
    + """
        limit = counted_in_use(counted_keys(KEYS[1]), math.floor(now / 1000))
      end
      if limit == -3 then return {0, -3} end
      if limit then return {-1, limit} end
    end
  end
  local h = nil
  if queued then h = head(queue_key, KEYS[1]) end
  if h == false then
    busy = -3
  elseif (not h) or h == token then
    local f = mint(fence_key, now, tonumber(ARGV[2]))
    redis.call('SET', KEYS[1], token .. ':' .. f .. ':' .. ARGV[3], 'PX', ARGV[2])
    if queued then
      -- our own entry always goes, wherever it stands: a grantee left in the queue would later be
      -- handed the lock again after it finished
      redis.call('ZREM', queue_key, token)
      redis.call('DEL', KEYS[1] .. ':reg:' .. token)
    end
    return {1, f}
  end
end
if ARGV[4] == '1' then
  -- queue (a place kept by ZADD NX: a poll does not move us back) and register as alive: the
  -- registration key expires REGISTRATION_MS after our last poll, so no stamp (and no TIME) is needed for it
  redis.call('ZADD', queue_key, 'NX', now_us(), token)
  redis.call('SET', KEYS[1] .. ':reg:' .. token, ARGV[2] .. '|' .. ARGV[3], 'PX', REGISTRATION_MS_VALUE)
  redis.call('PEXPIRE', queue_key, REGISTRATION_MS_VALUE)
end
return {0, busy or redis.call('PTTL', KEYS[1])}
""".replace("REGISTRATION_MS_VALUE", str(REGISTRATION_MS))
)

ACQUIRE_COUNTED = (
    _PREAMBLE
    + _COUNTED_FUNCS
    + """
-- ACQUIRE_COUNTED: one attempt at `weight` of the name's `limit` permits (semaphore, read-write lock).
-- Granted iff no live waiter is ahead of us and the holders' weights plus ours fit in the limit.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue, KEYS[4] alive (the mutex's: the limit binding),
-- KEYS[5] permits, KEYS[6] holders, KEYS[7] leases, KEYS[8] cqueue, KEYS[9] calive
-- ARGV[1] token, ARGV[2] ttl ms, ARGV[3] holder label, ARGV[4] '1' to queue when not granted,
-- ARGV[5] waiter registration ms, ARGV[6] limit (>= 2), ARGV[7] weight (1..limit)
-- returns {1, fence}  when granted (also when handed to us meanwhile, or asked again while we hold:
--                     the same fence, the lease refreshed to ttl from now),
--         {0, hint}   when not granted: ms until the first holder's lease ends; -2 when our weight
--                     fits but waiters come first; -3 when the head, or what expired holders held, is not
--                     known yet (poll again at once),
--         {-1, limit} when the name is in use with another limit (1: a mutex): nothing changed
local token, ttl, label = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local reg_ms, limit, w = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local c = {permits = KEYS[5], holders = KEYS[6], leases = KEYS[7], queue = KEYS[8], alive = KEYS[9]}
local wake = KEYS[1] .. ':wake:' .. token
local now = now_us()
local now_ms = math.floor(now / 1000)
local function registration()
  return n0(now_ms + reg_ms) .. '|' .. n0(ttl) .. '|' .. n0(w) .. '|' .. label
end
-- ours already: refresh the lease, answer the same fence
local held = redis.call('HGET', c.leases, token)
if held then
  local e, f, hw = string.match(held, '^(%d+)|(%d+)|(%d+)|')
  if (tonumber(e) or 0) > now_ms then
    local e2 = n0(now_ms + ttl)
    redis.call('ZADD', c.holders, 'XX', e2, token)
    redis.call('HSET', c.leases, token, e2 .. '|' .. f .. '|' .. hw .. '|' .. label)
    keep(c.holders, ttl)
    keep(c.leases, ttl)
    keep(c.permits, ttl)
    redis.call('DEL', wake)
    return {1, f}
  end
end
-- the limit binding, mutex side: its holder or a live waiter of it is a use with limit 1
if redis.call('EXISTS', KEYS[1], KEYS[3]) > 0 then
  if redis.call('EXISTS', KEYS[1]) == 1 then return {-1, 1} end
  local h = head(KEYS[3], KEYS[1])
  if h == false then return {0, -3} end
  if h then return {-1, 1} end
end
local st = load(c)
local b = {n = DEAD_BUDGET, g = GRANT_BUDGET}
local settled = purge(c, st, now_ms)
if st.limit and st.limit ~= limit then
  -- bound to another limit while a holder or a waiter of it lives
  local verdict = nil
  if not settled then
    verdict = {0, -3}
  elseif redis.call('EXISTS', c.holders) == 1 then
    verdict = {-1, st.limit}
  else
    local h = chead(c, now_ms, b)
    if h == false then verdict = {0, -3} elseif h then verdict = {-1, st.limit} end
  end
  if verdict then
    save(c, st)
    return verdict
  end
  -- what is left of that use is dead: the name is idle and takes our limit
  redis.call('DEL', c.permits, c.holders, c.leases, c.queue, c.alive)
  st = {limit = nil, used = 0, dirty = true, ttl = 0}
end
if not st.limit then
  st.limit = limit
  redis.call('HSET', c.permits, 'limit', n0(limit))
  st.dirty = true
  keep(c.permits, reg_ms)
end
-- a live place of ours in the queue is refreshed first, so a grant below uses what we ask now
local mine_reg = redis.call('HGET', c.alive, token)
if mine_reg and (tonumber(string.match(mine_reg, '^(%d+)')) or 0) > now_ms then
  redis.call('HSET', c.alive, token, registration())
end
-- permits freed meanwhile (leases that ran out, a release that could not hand everything over)
-- go to the waiters at the head first, in order
local mine, _, state = handoff(c, st, KEYS[2], KEYS[1], now, b, token)
if mine then
  save(c, st)
  redis.call('DEL', wake)
  return {1, mine}
end
if state == 'empty' and st.used + w <= limit then
  local f = cgrant(c, st, KEYS[2], now, token, w, ttl, label)
  save(c, st)
  return {1, f}
end
if ARGV[4] == '1' then
  redis.call('ZADD', c.queue, 'NX', n0(now), token)
  redis.call('HSET', c.alive, token, registration())
  redis.call('PEXPIRE', c.queue, reg_ms)
  redis.call('PEXPIRE', c.alive, reg_ms)
  keep(c.permits, reg_ms)
end
save(c, st)
-- expired holders left to drop overstate `used`: not a real wait, poll again at once
if state == 'unknown' or not settled then return {0, -3} end
if st.used + w <= limit then return {0, -2} end
local first = redis.call('ZRANGE', c.holders, 0, 0, 'WITHSCORES')
if first[2] then return {0, math.max(1, tonumber(first[2]) - now_ms)} end
return {0, -2}
"""
)

EXTEND = """
-- EXTEND: reset the lease to ARGV[2] ms from now, only if we still hold it (either layout).
-- KEYS[1] lock (the counted keys are derived from it); ARGV[1] token, ARGV[2] ttl ms
-- returns 1 when extended, 0 when the lease is gone or held by another token
local cur = redis.call('GET', KEYS[1])
if cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. ':' then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
local base = string.sub(KEYS[1], 1, -5)
local leases = base .. 'leases'
local v = redis.call('HGET', leases, ARGV[1])
if not v then return 0 end
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local e, rest = string.match(v, '^(%d+)|(.*)$')
if (tonumber(e) or 0) <= now_ms then return 0 end
local ttl = tonumber(ARGV[2])
local e2 = string.format('%.0f', now_ms + ttl)
redis.call('ZADD', base .. 'holders', 'XX', e2, ARGV[1])
redis.call('HSET', leases, ARGV[1], e2 .. '|' .. rest)
for _, k in ipairs({base .. 'holders', leases, base .. 'permits'}) do
  if redis.call('PTTL', k) < ttl then redis.call('PEXPIRE', k, ttl) end
end
return 1
"""

RELEASE = (
    """
-- RELEASE: delete-if-token-matches, or hand the freed lock or permits to the first live waiters.
-- KEYS[1] lock (the fence counter, the queue and the counted keys are derived from it, as in ACQUIRE)
-- ARGV[1] token
-- returns 0 when the lease was not ours (expired; maybe taken): nothing is changed;
--         1 when released; 2 when released and handed over to waiters
-- ours and nobody waits (the common case, as release() below does it): delete
local base = string.sub(KEYS[1], 1, -5)
local queue_key = base .. 'queue'
local cur = redis.call('GET', KEYS[1])
local mine = cur and string.sub(cur, 1, #ARGV[1] + 1) == ARGV[1] .. ':'
-- the queue's head batch, read at once (as cheap as an EXISTS when nobody waits, and a handoff
-- needs it anyway): HEAD_BATCH of head() below
local batch = nil
if mine then
  batch = redis.call('ZRANGE', queue_key, 0, 63)
  if #batch == 0 then
    redis.call('DEL', KEYS[1])
    return 1
  end
end
"""
    + _PREAMBLE
    + _RELEASE_FN
    + """
return release(KEYS[1], base .. 'fence', queue_key, ARGV[1], false, cur or false, batch)
"""
)

ABANDON = (
    _PREAMBLE
    + _RELEASE_FN
    + """
-- ABANDON: a waiter gives up (timeout, cancellation, error): leave the queue (either layout), and
-- if a lease was handed to us (or granted by a request whose answer we never read), pass it on. A
-- counted waiter's leaving may let those behind it in (a writer that did not fit): they are handed
-- what fits.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue, KEYS[4] alive (the counted keys are derived)
-- ARGV[1] token
-- returns what RELEASE returns (0 when we held nothing)
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[1] .. ':reg:' .. ARGV[1], KEYS[1] .. ':wake:' .. ARGV[1])
local base = string.sub(KEYS[1], 1, -5)
local left = redis.call('ZREM', base .. 'cqueue', ARGV[1])
redis.call('HDEL', base .. 'calive', ARGV[1])
return release(KEYS[1], KEYS[2], KEYS[3], ARGV[1], left == 1)
"""
)

INSPECT = """
-- INSPECT: who holds the name, in either layout.
-- KEYS[1] lock, KEYS[2] fence counter, KEYS[3] queue, KEYS[4] permits, KEYS[5] holders,
-- KEYS[6] leases, KEYS[7] cqueue
-- returns {mutex value or false, its pttl ms, number of queued waiters (both queues), last fence or
--          false, counted limit or false, server time ms,
--          {"<lease end ms>|<fence>|<weight>|<label>" of every running counted lease, at most 100000}}
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGE', KEYS[5], '(' .. string.format('%.0f', now_ms), '+inf', 'BYSCORE', 'LIMIT', 0, 100000)
local out = {}
for _, tok in ipairs(live) do
  local v = redis.call('HGET', KEYS[6], tok)
  if v then out[#out + 1] = v end
end
return {redis.call('GET', KEYS[1]), redis.call('PTTL', KEYS[1]),
        redis.call('ZCARD', KEYS[3]) + redis.call('ZCARD', KEYS[7]), redis.call('GET', KEYS[2]),
        redis.call('HGET', KEYS[4], 'limit') or false, string.format('%.0f', now_ms), out}
"""

FORCE_COUNTED = """
-- FORCE_COUNTED: the operator's override on a counted name: drop every holder whatever its token.
-- The waiters stay: the first of them get in at their next poll.
-- KEYS[1] permits, KEYS[2] holders, KEYS[3] leases
-- returns the "<lease end ms>|<fence>|<weight>|<label>" of every lease removed (expired ones too)
local out = {}
for _, tok in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  local v = redis.call('HGET', KEYS[3], tok)
  if v then out[#out + 1] = v end
end
redis.call('DEL', KEYS[2], KEYS[3])
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], 'used', '0') end
return out
"""


class Lua:
    """A script and its SHA-1, computed once (at import) instead of for every backend made: a
    backend per lock used to hash six scripts of several kilobytes each time (22 us a lock)."""

    __slots__ = ("sha", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()
