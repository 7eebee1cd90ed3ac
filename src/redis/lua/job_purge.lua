-- Removes EndState jobs whose retention time has passed, with their index
-- entries, up to ARGV[2] of them per call. Jobs that left EndState cannot
-- exist (EndState is final), so the ended zset is the only index to read.
--
-- KEYS[1] ended zset   KEYS[2] change stream
-- ARGV[1] now (ms)     ARGV[2] batch size   ARGV[3] key prefix of the scope
--   (job hash = ARGV[3]..'job:'..id, state set = ARGV[3]..'st:'..state,
--   audit stream = ARGV[3]..'audit:'..id)
-- ARGV[4] change stream max length
-- Returns the number of jobs removed.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  local job = ARGV[3] .. 'job:' .. id
  local state = redis.call('HGET', job, 'state')
  if state then
    redis.call('SREM', ARGV[3] .. 'st:' .. state, id)
  end
  redis.call('DEL', job, ARGV[3] .. 'audit:' .. id)
  redis.call('ZREM', KEYS[1], id)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'job', id, 'state', '', 'v', 0, 'kind', 'purged')
end
return #ids
