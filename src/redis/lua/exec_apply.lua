-- Writes a job's new execution state with a version check (compare and
-- swap) and, in the same atomic step, schedules its timers, enqueues its
-- follow-up work items and updates the index of jobs waiting for event
-- types; an event kept in the scope's early list that the new state took
-- is removed in the same step (so a crash can neither lose it nor apply it
-- twice). All keys share the scope's hash tag.
--
-- KEYS[1] exec hash   KEYS[2] timers zset   KEYS[3] work stream
-- KEYS[4] the scope's early-event list   KEYS[5] the job's audit stream
-- KEYS[6..] waiting-for-type zsets, one per entry of the waiting list
-- ARGV[1] expected version (0: must not exist)   ARGV[2] state JSON
-- ARGV[3] recipe JSON ('' keeps the stored one)   ARGV[4] job id
-- ARGV[5] the early-list entry this state took ('' none)
-- ARGV[6] number of disarmed timers D, then D keys (timers the new state
-- no longer reacts to: removed, so they never fire as no-ops)
-- then the number of timers T, then T pairs (key, due ms)
-- then the number of work items W, then W JSON items
-- then for each waiting zset (same order as KEYS[6..]): op ('add'|'rem'), score
-- then the audit entry of this write (JSON, `jobs::audit`; '' none)
-- Returns {'OK', version} | {'VERSION', current version}
--   | {'GONE', current version} (the early entry was taken by another job)
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return {'VERSION', current}
end
if ARGV[5] ~= '' and redis.call('LREM', KEYS[4], 1, ARGV[5]) == 0 then
  return {'GONE', current}
end
local v = current + 1
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'v', v, 'doc', ARGV[2], 'recipe', ARGV[3])
else
  redis.call('HSET', KEYS[1], 'v', v, 'doc', ARGV[2])
end
local job = ARGV[4]
local i = 6
local disarmed = tonumber(ARGV[i]); i = i + 1
if disarmed > 0 then
  local members = {}
  for d = 1, disarmed do
    members[d] = job .. '\31' .. ARGV[i]
    i = i + 1
  end
  redis.call('ZREM', KEYS[2], unpack(members))
end
local timers = tonumber(ARGV[i]); i = i + 1
for _ = 1, timers do
  redis.call('ZADD', KEYS[2], tonumber(ARGV[i + 1]), job .. '\31' .. ARGV[i])
  i = i + 2
end
local items = tonumber(ARGV[i]); i = i + 1
for _ = 1, items do
  redis.call('XADD', KEYS[3], '*', 'item', ARGV[i])
  i = i + 1
end
for k = 6, #KEYS do
  if ARGV[i] == 'add' then
    redis.call('ZADD', KEYS[k], tonumber(ARGV[i + 1]), job)
  else
    redis.call('ZREM', KEYS[k], job)
  end
  i = i + 2
end
if ARGV[i] and ARGV[i] ~= '' then
  redis.call('XADD', KEYS[5], 'MAXLEN', '~', 10000, '*', 'e', ARGV[i])
end
return {'OK', v}
