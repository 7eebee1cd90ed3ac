-- Counts a job's unexpired dispatch leases (taken by the SFC engine's
-- `dispatch_lease.lua` while a command is being sent) and drops the
-- expired ones. Server time (TIME): the clock leases are taken on (the
-- station passes its measure of it to dispatch_lease.lua).
--
-- KEYS[1] the job's dispatch lease zset
-- Returns the number of live leases.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
