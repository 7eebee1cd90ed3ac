-- Repairs a scope's state index (written by job_apply.lua): entries for
-- jobs read at a known version, each written only if the job is still live
-- at that version (a job that changed since has had its entry written by
-- job_apply.lua), and entries removed for jobs that are not live. Used when
-- the index and the live set disagree (data from a version without the
-- index). All keys share the scope's hash tag.
--
-- KEYS[1] state-index hash   KEYS[2] live-jobs set
-- ARGV[1] key prefix of the scope (job hash = ARGV[1]..'job:'..id)
-- ARGV[2] number of entries N, then N triples (id, version, entry JSON)
-- then ids whose entry is removed unless the job is live
-- Returns the number of entries written or removed.
local n = tonumber(ARGV[2])
local done = 0
local i = 3
for _ = 1, n do
  local id, version, entry = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  local job = ARGV[1] .. 'job:' .. id
  if redis.call('HGET', job, 'v') == version and redis.call('SISMEMBER', KEYS[2], id) == 1 then
    redis.call('HSET', KEYS[1], id, entry)
    done = done + 1
  end
end
for j = i, #ARGV do
  if redis.call('SISMEMBER', KEYS[2], ARGV[j]) == 0 then
    done = done + redis.call('HDEL', KEYS[1], ARGV[j])
  end
end
return done
