-- Applies one job command atomically, with a version check (compare and
-- swap): the caller read the job at version ARGV[1], computed the new state
-- in Rust, and this script writes it only if nobody changed the job since.
-- Every key shares the scope's hash tag, so it runs on Redis Cluster too.
--
-- KEYS[1] job hash          KEYS[2] live-jobs set     KEYS[3] old state set
-- KEYS[4] new state set     KEYS[5] ended zset        KEYS[6] change stream
-- KEYS[7] state-index hash (job id -> entry JSON, live jobs only)
-- KEYS[8] the job's audit stream
-- ARGV[1] expected version (0: the job must not exist)
-- ARGV[2] job order JSON ('' keeps the stored one)
-- ARGV[3] new state key     ARGV[4] 1 if the new state is live, else 0
-- ARGV[5] job response JSON ('' keeps the stored one)
-- ARGV[6] cause (source, id of the command)   ARGV[7] now (ms)
-- ARGV[8] retention (ms) for an EndState job
-- ARGV[9] live-job limit for a new job (0: none)
-- ARGV[10] change stream max length   ARGV[11] job id   ARGV[12] kind
-- ARGV[13] the new state in its wire form (JSON array), for the index
-- ARGV[14] 1 if the old state was live (then the job is in the live set)
-- ARGV[15] W3C traceparent of the command's handling ('' when traces are
--          off): kept with the job and on the change entry, so the SFC
--          engine continues the command's trace
-- ARGV[16] the audit entry of this change (JSON, `jobs::audit`; '' none):
--          appended with the new version only if the change is written
-- Returns {'OK', version} | {'VERSION', current version} | {'LIMIT', live}
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return {'VERSION', current}
end
local limit = tonumber(ARGV[9])
if current == 0 and limit > 0 then
  local live = redis.call('SCARD', KEYS[2])
  if live >= limit then
    return {'LIMIT', live}
  end
end
local v = current + 1
local fields = {'v', v, 'state', ARGV[3], 'cause', ARGV[6], 'updated', ARGV[7]}
if ARGV[2] ~= '' then
  table.insert(fields, 'order')
  table.insert(fields, ARGV[2])
end
if ARGV[5] ~= '' then
  table.insert(fields, 'resp')
  table.insert(fields, ARGV[5])
end
local trace = ARGV[15] or ''
if trace ~= '' then
  table.insert(fields, 'trace')
  table.insert(fields, trace)
end
redis.call('HSET', KEYS[1], unpack(fields))
if current == 0 then
  redis.call('SADD', KEYS[4], ARGV[11])
elseif KEYS[3] ~= KEYS[4] then
  redis.call('SREM', KEYS[3], ARGV[11])
  redis.call('SADD', KEYS[4], ARGV[11])
end
if ARGV[4] == '1' then
  if current == 0 or ARGV[14] ~= '1' then
    redis.call('SADD', KEYS[2], ARGV[11])
  end
  local has_result = ARGV[5] ~= '' or redis.call('HEXISTS', KEYS[1], 'resp') == 1
  redis.call('HSET', KEYS[7], ARGV[11], '{"has_result":' .. tostring(has_result) ..
    ',"job_order_id":' .. cjson.encode(ARGV[11]) .. ',"state":' .. ARGV[13] .. '}')
else
  redis.call('SREM', KEYS[2], ARGV[11])
  redis.call('HDEL', KEYS[7], ARGV[11])
  redis.call('ZADD', KEYS[5], tonumber(ARGV[7]) + tonumber(ARGV[8]), ARGV[11])
end
if trace ~= '' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*',
    'job', ARGV[11], 'state', ARGV[3], 'v', v, 'kind', ARGV[12], 'trace', trace)
else
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[10], '*',
    'job', ARGV[11], 'state', ARGV[3], 'v', v, 'kind', ARGV[12])
end
local audit = ARGV[16] or ''
if audit ~= '' then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', 10000, '*', 'v', v, 'e', audit)
end
return {'OK', v}
