"""The Redis task store's Lua scripts: every change of a task is one script, so it is atomic.

They touch only keys passed in KEYS (what Redis Cluster requires); the KEYS and ARGV layout of
each is described at its top, and the keys themselves in adapters/redis_store.py's docstring.
`false` comes back to Python as None.
"""

CREATE = """
-- KEYS[1] counts hash, KEYS[2] unpublished zset, then per task its hash key followed by its
-- idempotency key when it has one and its owner's listing zset when it has an owner; the last
-- two keys are the listing of every task and the active zset.
-- ARGV[1]: the cap of queued or running tasks per owner ('0': none). Then per task: id,
-- has_key ('1'/'0'), status, created_at, stale, owner ('' for none), n, then n field/value items.
-- `stale` is a task id the idempotency key may be taken over from (its task vanished), or ''.
-- Returns per task 1 when stored, or the id of the task already stored (same id or same key);
-- or, storing nothing, {-1, owner, pending} when the new tasks would take an owner past the cap.
-- First pass: read each task's arguments and keys once, find which are already stored (also
-- earlier in this call), and add up what the new ones add to each owner's pending count.
local cap = tonumber(ARGV[1])
local tasks, adding, seen = {}, {}, {}
local k = 3
local a = 2
while a <= #ARGV do
  local t = {id = ARGV[a], status = ARGV[a + 2], created = ARGV[a + 3], owner = ARGV[a + 5],
    first = a + 7, n = tonumber(ARGV[a + 6])}
  local has_key, stale = ARGV[a + 1], ARGV[a + 4]
  a = t.first + t.n
  t.task_key = KEYS[k]
  k = k + 1
  if has_key == '1' then
    t.idem_key = KEYS[k]
    k = k + 1
  end
  if t.owner ~= '' then
    t.listing = KEYS[k]
    k = k + 1
  end
  if seen[t.task_key] or redis.call('EXISTS', t.task_key) == 1 then
    t.existing = t.id
  elseif t.idem_key then
    local holder = seen[t.idem_key] or redis.call('GET', t.idem_key)
    if holder and holder ~= stale then
      t.existing = holder
    end
  end
  if not t.existing then
    seen[t.task_key] = true
    if t.idem_key then
      seen[t.idem_key] = t.id
    end
    if t.status == 'queued' and t.owner ~= '' then
      adding[t.owner] = (adding[t.owner] or 0) + 1
    end
  end
  tasks[#tasks + 1] = t
end
if cap > 0 then
  for owner, n in pairs(adding) do
    local pending = tonumber(redis.call('HGET', KEYS[1], 'pending:' .. owner) or '0')
    if pending + n > cap then
      return {-1, owner, pending}
    end
  end
end
-- Second pass: store the new tasks.
local out = {}
for _, t in ipairs(tasks) do
  if t.existing then
    out[#out + 1] = t.existing
  else
    redis.call('HSET', t.task_key, unpack(ARGV, t.first, t.first + t.n - 1))
    if t.idem_key then
      redis.call('SET', t.idem_key, t.id)
    end
    redis.call('HINCRBY', KEYS[1], t.status, 1)
    redis.call('ZADD', KEYS[#KEYS - 1], t.created, t.id)
    if t.listing then
      redis.call('ZADD', t.listing, t.created, t.id)
    end
    if t.status == 'queued' or t.status == 'running' then
      redis.call('ZADD', KEYS[#KEYS], 0, t.id)
    end
    if t.status == 'queued' then
      redis.call('ZADD', KEYS[2], t.created, t.id)
      if t.owner ~= '' then
        redis.call('HINCRBY', KEYS[1], 'pending:' .. t.owner, 1)
      end
    end
    out[#out + 1] = 1
  end
end
return out
"""

START = """
-- KEYS[1] task hash, KEYS[2] counts, KEYS[3] active zset. ARGV: attempts a start counts
-- (domain.lifecycle), now, worker id, task id.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return false
end
if status == 'queued' or status == 'running' then
  redis.call('ZADD', KEYS[3], 0, ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'attempts', tonumber(ARGV[1]))
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[2], 'worker', ARGV[3])
  if status == 'queued' then
    redis.call('HINCRBY', KEYS[2], 'queued', -1)
    redis.call('HINCRBY', KEYS[2], 'running', 1)
  end
end
return redis.call('HGETALL', KEYS[1])
"""

FINISH = """
-- KEYS[1] task hash, KEYS[2] counts, KEYS[3] dead-letter list, KEYS[4] finished zset,
-- KEYS[5] unpublished zset, KEYS[6] active zset.
-- ARGV: new status, field to set, its value, field to clear, now, dead letter ('1'/'0'),
-- dead letters kept, task id, reason (for the dead letter), completed_by and
-- completed_attempt ('' to record none), the channel of end notices, a further field to set
-- ('' for none) and its value (the per-shot results).
-- The first outcome wins: a task that already ended is returned unchanged, with no dead letter.
-- The call that ends the task publishes its id on the channel, atomically with the change, so
-- no end can be stored without its notice being sent (long polls wait for these).
-- An ended task leaves the unpublished ledger, so the reconciler never publishes it.
-- Returns {1 when this call ended the task else 0, the task's hash}.
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return false
end
local changed = 0
if status == 'queued' or status == 'running' then
  changed = 1
  redis.call('HSET', KEYS[1], 'status', ARGV[1], ARGV[2], ARGV[3], 'finished_at', ARGV[5])
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[1], 'completed_by', ARGV[10])
  end
  if ARGV[11] ~= '' then
    redis.call('HSET', KEYS[1], 'completed_attempt', ARGV[11])
  end
  if ARGV[13] ~= '' then
    redis.call('HSET', KEYS[1], ARGV[13], ARGV[14])
  end
  redis.call('HDEL', KEYS[1], ARGV[4], 'worker')
  redis.call('HINCRBY', KEYS[2], status, -1)
  redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
  redis.call('ZADD', KEYS[4], ARGV[5], ARGV[8])
  redis.call('ZREM', KEYS[5], ARGV[8])
  redis.call('ZREM', KEYS[6], ARGV[8])
  local owner = redis.call('HGET', KEYS[1], 'owner')
  if owner then
    redis.call('HINCRBY', KEYS[2], 'pending:' .. owner, -1)
  end
  if ARGV[6] == '1' then
    local attempts = redis.call('HGET', KEYS[1], 'attempts')
    local record = '{"task_id":' .. cjson.encode(ARGV[8]) .. ',"reason":' ..
      cjson.encode(ARGV[9]) .. ',"attempts":' .. attempts .. ',"at":' .. ARGV[5] .. '}'
    redis.call('LPUSH', KEYS[3], record)
    redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[7]) - 1)
  end
  redis.call('PUBLISH', ARGV[12], ARGV[8])
end
return {changed, redis.call('HGETALL', KEYS[1])}
"""

RELEASE = """
-- KEYS[1] task hash, KEYS[2] counts, KEYS[3] active zset. ARGV: has reason ('1'/'0'), reason,
-- attempts to refund, task id.
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' then
  return false
end
redis.call('ZADD', KEYS[3], 0, ARGV[4])
redis.call('HSET', KEYS[1], 'status', 'queued')
if ARGV[1] == '1' then
  redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
end
if ARGV[3] ~= '0' then
  redis.call('HINCRBY', KEYS[1], 'attempts', -tonumber(ARGV[3]))
end
redis.call('HDEL', KEYS[1], 'worker')
redis.call('HINCRBY', KEYS[2], 'running', -1)
redis.call('HINCRBY', KEYS[2], 'queued', 1)
return redis.call('HGETALL', KEYS[1])
"""


REMOVE = """
-- KEYS[1] counts, KEYS[2] finished zset, then per task its hash key followed by its idempotency
-- key when it has one and its owner's listing zset when it has an owner; the last two keys are
-- the listing of every task and the active zset. ARGV[1]: the channel of end notices; then per
-- task: id, has_key ('1'/'0'), has_owner ('1'/'0').
-- Deletes each task that ended (and its idempotency key while that still names it); a task not
-- ended is kept. Publishes the deleted ids (comma-separated) on the channel, so that a waiter
-- re-reads and finds its task gone. Returns how many were deleted.
local deleted = {}
local k = 3
for a = 2, #ARGV, 3 do
  local id, task_key = ARGV[a], KEYS[k]
  local idem_key, listing = false, false
  k = k + 1
  if ARGV[a + 1] == '1' then
    idem_key = KEYS[k]
    k = k + 1
  end
  if ARGV[a + 2] == '1' then
    listing = KEYS[k]
    k = k + 1
  end
  local status = redis.call('HGET', task_key, 'status')
  if status == 'completed' or status == 'failed' then
    redis.call('DEL', task_key)
    redis.call('HINCRBY', KEYS[1], status, -1)
    if idem_key and redis.call('GET', idem_key) == id then
      redis.call('DEL', idem_key)
    end
    deleted[#deleted + 1] = id
  end
  if status ~= 'queued' and status ~= 'running' then
    redis.call('ZREM', KEYS[2], id)
    redis.call('ZREM', KEYS[#KEYS], id)
    redis.call('ZREM', KEYS[#KEYS - 1], id)
    if listing then
      redis.call('ZREM', listing, id)
    end
  end
end
if #deleted > 0 then
  redis.call('PUBLISH', ARGV[1], table.concat(deleted, ','))
end
return #deleted
"""

BACKFILL_ACTIVE = """
-- KEYS[1] active zset, then task hashes. Adds the queued and running ones to the active index
-- (as the scripts above would have); returns how many were not in it yet.
local added = 0
for i = 2, #KEYS do
  local fields = redis.call('HMGET', KEYS[i], 'status', 'id')
  if fields[1] == 'queued' or fields[1] == 'running' then
    added = added + redis.call('ZADD', KEYS[1], 0, fields[2])
  end
end
return added
"""

BACKFILL_LISTING = """
-- KEYS[1] the listing of every task, then per task its hash key followed by its owner's listing
-- when it has one. ARGV: per task, has_owner ('1'/'0'), as read before the call (an owner never
-- changes). Adds each task that still exists to the listings (as the create script would have),
-- never moving an entry already there; a task deleted since it was read is skipped, so no entry
-- outlives its task. Returns how many were not in the listing of every task yet.
local added = 0
local k = 2
for a = 1, #ARGV do
  local task_key = KEYS[k]
  local listing = false
  k = k + 1
  if ARGV[a] == '1' then
    listing = KEYS[k]
    k = k + 1
  end
  local fields = redis.call('HMGET', task_key, 'id', 'created_at')
  if fields[1] then
    added = added + redis.call('ZADD', KEYS[1], 'NX', fields[2], fields[1])
    if listing then
      redis.call('ZADD', listing, 'NX', fields[2], fields[1])
    end
  end
end
return added
"""

SWAP_MARKER = """
-- KEYS[1] the marker. ARGV: expected present ('1'/'0'), expected value, new value.
-- Compare-and-set: stores the new value only if the marker still holds the expected one.
local current = redis.call('GET', KEYS[1])
if (ARGV[1] == '0' and not current) or (ARGV[1] == '1' and current == ARGV[2]) then
  redis.call('SET', KEYS[1], ARGV[3])
  return 1
end
return 0
"""
