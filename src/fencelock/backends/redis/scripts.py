"""The Redis protocol as Lua scripts: what each takes (KEYS, ARGV) and returns is written above it.

Key layout, fences and the waiting rules are described in the package docstring
(``fencelock.backends.redis``); the names in the scripts follow it.
"""

from __future__ import annotations

__all__ = [
    "ABANDON",
    "ACQUIRE",
    "BLOCK_CAP",
    "DEFAULT_PREFIX",
    "EXTEND",
    "INSPECT",
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
