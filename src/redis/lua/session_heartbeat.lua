-- Renews the heartbeat of one MQTT session, timed by the Redis clock so
-- that replicas with skewed clocks agree on its age.
-- KEYS[1] sessions zset; KEYS[2] session info hash; KEYS[3] the takeover
-- lock of this session.
-- ARGV[1] client id; ARGV[2] session info (JSON).
-- Returns {1 if the entry was new (after a completed takeover, or at
-- start), 1 if a peer holds the session's takeover lock}.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local added = redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return {added, redis.call('EXISTS', KEYS[3])}
