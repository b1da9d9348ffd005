"""
The Lua scripts of account-wide job slots: one atomic script per Redis call.

A slot is a **lease** (a member of the group's sorted set, scored by its expiry in
Redis server time), renewed by the process that holds it.  What makes the limit a
promise about jobs running at the API rather than about leases:

* every lease is **bound**: ``""`` from its admission (its submit may be on the
  wire), then its job's id (`BIND_LUA`, and every renewal);
* a lease that expires (its process died, or lost Redis for longer than a lease)
  does not free its slot when it is bound: it becomes an **orphan**, still
  counted.  A job's orphan is freed when the job is known to have ended: its
  terminal event is stored (a receiver published it: every slot script looks),
  or a live process asked the API (`RENEW_LUA` hands out the orphans due for a
  check, one process each).  An
  orphan whose submit was on the wire is freed after that submit's settle
  horizon, when it can no longer make a job;
* a group records an **epoch**: a process that knew one and finds none knows
  Redis lost its data, and admissions **hold** until every live process has had
  a renewal interval to register its leases again;
* each process records its **limit and lease**, and admission uses the strictest
  limit of the live processes.

Every slot script takes the group's keys in `SLOT_KEYS` order and starts with the
arguments of `slot_args`.
"""

from __future__ import annotations


__all__ = [
    "ACQUIRE_LUA",
    "BIND_LUA",
    "IN_USE_LUA",
    "LEAVE_LUA",
    "RELEASE_LUA",
    "RENEW_LUA",
    "SLOT_KEYS",
]

#: The kinds of a group's keys, in the order every slot script takes them.
SLOT_KEYS = (
    "slots",  # lease -> expiry (ms): the leases renewed by live processes
    "slots-queue",  # waiter -> arrival number: the waiters' line
    "slots-queue-expiry",  # waiter -> when it stops counting (ms)
    "slots-seq",  # the arrival counter
    "slots-procs",  # process -> expiry (ms): the processes renewing leases
    "slots-bound",  # lease -> its job id ("" until its submit answered)
    "slots-orphans",  # lease -> when it is due (ms): expired leases still counted
    "slots-jobs",  # job id -> lease
    "slots-configs",  # process -> "limit lease_ms"
    "slots-hold",  # set while admissions hold (after Redis lost its data)
    "slots-epoch",  # the group's epoch: its loss means Redis lost the group
)

# ARGV[1..7] of every slot script: limit, lease ms, settle ms, inbox prefix,
# turn message, orphan check interval ms, prefix of the stored events' keys.
_HEAD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local LEASES, QUEUE, QEXP, SEQ, PROCS = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local BOUND, ORPHANS, JOBS, CONFIGS = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local HOLD, EPOCH = KEYS[10], KEYS[11]
local LIMIT, LEASE = tonumber(ARGV[1]), tonumber(ARGV[2])
local SETTLE, INBOX, MESSAGE = tonumber(ARGV[3]), ARGV[4], ARGV[5]
local CHECK, EVENTS = tonumber(ARGV[6]), ARGV[7]

local function used()
  return redis.call('ZCARD', LEASES) + redis.call('ZCARD', ORPHANS)
end

-- The strictest limit of the live processes (their own, as they said it).
local function limit()
  local least = LIMIT
  for _, config in ipairs(redis.call('HVALS', CONFIGS)) do
    local other = tonumber(string.match(config, '^(%d+)'))
    if other and other < least then least = other end
  end
  return least
end

-- A slot given back, whatever it was (alive or orphaned, bound or not).
local function drop(lease)
  local job = redis.call('HGET', BOUND, lease)
  if job and job ~= '' and redis.call('HGET', JOBS, job) == lease then
    redis.call('HDEL', JOBS, job)
  end
  redis.call('HDEL', BOUND, lease)
  return redis.call('ZREM', LEASES, lease) + redis.call('ZREM', ORPHANS, lease)
end

-- Leases nobody renews any more: one bound to a job stays taken (an orphan,
-- due for a check now) until its job's terminal event is stored; one whose
-- submit was on the wire stays taken until its settle horizon; any other is
-- free.  Returns how many slots were freed.
local function expire()
  local freed = 0
  for _, lease in ipairs(redis.call('ZRANGEBYSCORE', LEASES, '-inf', now)) do
    redis.call('ZREM', LEASES, lease)
    local job = redis.call('HGET', BOUND, lease)
    if job and job ~= '' then
      redis.call('ZADD', ORPHANS, now, lease)
    elseif job then
      redis.call('ZADD', ORPHANS, now + SETTLE, lease)
    else
      freed = freed + 1
    end
  end
  local orphans = redis.call('ZRANGE', ORPHANS, 0, -1, 'WITHSCORES')
  for i = 1, #orphans, 2 do
    local lease, due = orphans[i], tonumber(orphans[i + 1])
    local job = redis.call('HGET', BOUND, lease)
    if not job or job == '' then
      if due <= now then freed = freed + drop(lease) end
    elseif redis.call('EXISTS', EVENTS .. job) == 1 then
      freed = freed + drop(lease)
    end
  end
  return freed
end

local function purge()
  for _, waiter in ipairs(redis.call('ZRANGEBYSCORE', QEXP, '-inf', now)) do
    redis.call('ZREM', QUEUE, waiter)
    redis.call('ZREM', QEXP, waiter)
  end
end

-- Tell the waiters first in line, as many as there are free slots, that their
-- turn came: one message to the inbox of each of their processes, naming them
-- ("r<group>\\n<waiter>,<waiter>").  Waiter ids start with their process's id.
local function tell(free, except)
  if free <= 0 or redis.call('EXISTS', HOLD) == 1 then return end
  local order, names = {}, {}
  for _, waiter in ipairs(redis.call('ZRANGE', QUEUE, 0, free - 1)) do
    local process = string.match(waiter, '^([^:]+):')
    if process and waiter ~= except then
      if not names[process] then
        names[process] = {}
        order[#order + 1] = process
      end
      table.insert(names[process], waiter)
    end
  end
  for _, process in ipairs(order) do
    redis.call('PUBLISH', INBOX .. process,
      MESSAGE .. '\\n' .. table.concat(names[process], ','))
  end
end

-- The group's epoch; a process that knew one and finds none (Redis lost its
-- data) makes admissions hold for *hold* ms, while live processes register
-- their leases again.
local function epoch(known, new, hold)
  local current = redis.call('GET', EPOCH)
  if not current then
    current = new
    redis.call('SET', EPOCH, new)
    if known ~= '' then redis.call('SET', HOLD, '1', 'PX', hold) end
  end
  redis.call('PEXPIRE', EPOCH, 86400000)
  return current
end

local function keep()
  local ttl = math.max(LEASE, SETTLE, CHECK) * 2
  for i = 1, 9 do redis.call('PEXPIRE', KEYS[i], ttl) end
end
"""

# ARGV[8..]: waiter, lease id, queue ttl ms, process id, own config, known epoch,
# new epoch, hold ms.
# Returns {granted, rank in the queue, slots in use, place in the queue (its
# arrival number), epoch, limit in force}.  A slot found free, or still free after
# this admission, is told to the waiters whose turn it is.
ACQUIRE_LUA = (
    _HEAD
    + """
local waiter, lease = ARGV[8], ARGV[9]
local freed = expire()
purge()
local current = epoch(ARGV[13], ARGV[14], ARGV[15])
redis.call('HSET', CONFIGS, ARGV[11], ARGV[12])
local seq = redis.call('ZSCORE', QUEUE, waiter)
if not seq then
  seq = redis.call('INCR', SEQ)
  redis.call('ZADD', QUEUE, seq, waiter)
end
redis.call('ZADD', QEXP, now + tonumber(ARGV[10]), waiter)
local inuse = used()
local rank = redis.call('ZRANK', QUEUE, waiter)
local most = limit()
local granted = 0
if redis.call('EXISTS', HOLD) == 0 and rank < most - inuse then
  redis.call('ZREM', QUEUE, waiter)
  redis.call('ZREM', QEXP, waiter)
  redis.call('ZADD', LEASES, now + LEASE, ARGV[9])
  redis.call('HSET', BOUND, ARGV[9], '')
  inuse = inuse + 1
  granted = 1
end
if granted == 1 or freed > 0 then tell(most - inuse, waiter) end
keep()
return {granted, rank, inuse, tonumber(seq), current, most}
"""
)

# ARGV[8..]: process id, own config, known epoch, new epoch, hold ms, whether this
# process checks orphans with the API ("1"/"0"), then pairs of lease id and job
# id ("" while unbound).
# (Re-)registers every lease this process holds, bound to its job, so leases
# admitted while Redis was away, lost to an outage, or orphaned meanwhile count
# as this process's again; a lease whose job's terminal event is stored is given
# back instead.  Orphans due for a check are handed to this process (at most 20;
# due again after CHECK).
# Returns {re-added, processes, epoch, leases given back, jobs to check,
# configs of the live processes}.
RENEW_LUA = (
    _HEAD
    + """
local freed = expire()
local current = epoch(ARGV[10], ARGV[11], ARGV[12])
redis.call('ZREMRANGEBYSCORE', PROCS, '-inf', now)
redis.call('ZADD', PROCS, now + LEASE, ARGV[8])
for _, process in ipairs(redis.call('HKEYS', CONFIGS)) do
  if not redis.call('ZSCORE', PROCS, process) then
    redis.call('HDEL', CONFIGS, process)
  end
end
redis.call('HSET', CONFIGS, ARGV[8], ARGV[9])
local added, ended = 0, {}
for i = 14, #ARGV, 2 do
  local lease, job = ARGV[i], ARGV[i + 1]
  if job ~= '' and redis.call('EXISTS', EVENTS .. job) == 1 then
    freed = freed + drop(lease)
    ended[#ended + 1] = lease
  else
    if redis.call('ZREM', ORPHANS, lease) == 0
        and not redis.call('ZSCORE', LEASES, lease) then
      added = added + 1
    end
    redis.call('ZADD', LEASES, now + LEASE, lease)
    redis.call('HSET', BOUND, lease, job)
    if job ~= '' then redis.call('HSET', JOBS, job, lease) end
  end
end
local due = {}
if ARGV[13] == '1' then
  for _, lease in ipairs(redis.call('ZRANGEBYSCORE', ORPHANS, '-inf', now)) do
    local job = redis.call('HGET', BOUND, lease)
    if job and job ~= '' and #due < 20 then
      due[#due + 1] = job
      redis.call('ZADD', ORPHANS, now + CHECK, lease)
    end
  end
end
if freed > 0 then
  purge()
  tell(limit() - used(), false)
end
keep()
return {added, redis.call('ZCARD', PROCS), current, ended, due,
        redis.call('HVALS', CONFIGS)}
"""
)

# ARGV[8..]: pairs of lease id and job id.  Binds each lease still counted (alive
# or orphaned) to its job; an orphan is then due for a check at once.
BIND_LUA = (
    _HEAD
    + """
local bound = 0
for i = 8, #ARGV, 2 do
  local lease, job = ARGV[i], ARGV[i + 1]
  if redis.call('HEXISTS', BOUND, lease) == 1 then
    redis.call('HSET', BOUND, lease, job)
    redis.call('HSET', JOBS, job, lease)
    if redis.call('ZSCORE', ORPHANS, lease) then
      redis.call('ZADD', ORPHANS, now, lease)
    end
    bound = bound + 1
  end
end
return bound
"""
)

# ARGV[8]: "lease" or "job"; ARGV[9..]: lease ids, or job ids (their leases).
# Gives the slots back (from any process: a release needs no live owner) and tells
# the waiters whose turn it is.  Returns how many slots were freed.
RELEASE_LUA = (
    _HEAD
    + """
local removed = 0
for i = 9, #ARGV do
  local lease = ARGV[i]
  if ARGV[8] == 'job' then lease = redis.call('HGET', JOBS, ARGV[i]) end
  if lease then removed = removed + drop(lease) end
end
removed = removed + expire()
if removed > 0 and redis.call('EXISTS', QUEUE) == 1 then
  purge()
  tell(limit() - used(), false)
end
return removed
"""
)

# ARGV[8]: waiter id.  A waiter that gives up may have held a turn: it passes to
# those behind it.
LEAVE_LUA = (
    _HEAD
    + """
local queued = redis.call('ZREM', QUEUE, ARGV[8])
redis.call('ZREM', QEXP, ARGV[8])
local freed = expire()
if queued + freed > 0 then tell(limit() - used(), false) end
return queued
"""
)

# Returns the slots taken: live leases and orphans.
IN_USE_LUA = _HEAD + "expire()\nreturn used()\n"
