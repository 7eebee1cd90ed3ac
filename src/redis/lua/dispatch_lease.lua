-- The fence in front of every command: a dispatch may go out only while its
-- job is Running. The state check and the lease are one atomic step, so a
-- transition that makes the job non-Running either comes first (and no
-- lease is granted) or finds the lease and waits for it to be released
-- before it publishes its status event (`jobs/lua/leases_live.lua`).
-- The caller passes the time on Redis's clock (`runtime::clock`, the
-- offset to the server measured at start), so replicas with skewed clocks
-- agree on expiry. All keys share the scope's hash tag.
--
-- KEYS[1] job hash   KEYS[2] the job's dispatch lease zset
-- KEYS[3] the job's held dispatches (list)
-- ARGV[1] Running's main state number   ARGV[2] Interrupted's
-- ARGV[3] lease member (command id and a unique token)   ARGV[4] lease (ms)
-- ARGV[5] the dispatch work item JSON (kept while the job is Interrupted)
-- ARGV[6] now (ms, Redis's clock)
-- Returns 'LEASED' (send it, then release), 'HELD' (kept until Resume)
-- or 'RECALLED' (the job ended, was aborted or is gone: never send it).
local state = redis.call('HGET', KEYS[1], 'state')
local main = state and string.match(state, '^(%d+)')
if main == ARGV[1] then
  local now = tonumber(ARGV[6])
  local ttl = tonumber(ARGV[4])
  redis.call('ZADD', KEYS[2], now + ttl, ARGV[3])
  -- A replica that dies holding a lease leaves no garbage behind.
  redis.call('PEXPIRE', KEYS[2], 2 * ttl)
  return 'LEASED'
end
if main == ARGV[2] then
  -- Paused: Resume sends it (`dispatch_resume.lua`); a redelivered item
  -- is kept once.
  if not redis.call('LPOS', KEYS[3], ARGV[5]) then
    redis.call('RPUSH', KEYS[3], ARGV[5])
  end
  return 'HELD'
end
return 'RECALLED'
