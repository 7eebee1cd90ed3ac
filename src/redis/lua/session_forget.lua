-- Removes a session from the registry, but only while it is still dead: an
-- owner that came back (same client id) has renewed its heartbeat since,
-- and keeps its entry.
-- KEYS[1] sessions zset; KEYS[2] session info hash.
-- ARGV[1] client id; ARGV[2] dead after (ms).
-- Returns 1 if removed.
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score == false then
  redis.call('HDEL', KEYS[2], ARGV[1])
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if tonumber(score) > now - tonumber(ARGV[2]) then
  return 0
end
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
return 1
