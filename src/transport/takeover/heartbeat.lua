-- Renews the heartbeat of one MQTT session, timed by the Redis clock so
-- that replicas with skewed clocks agree on its age.
-- KEYS[1] sessions zset; KEYS[2] session info hash.
-- ARGV[1] client id; ARGV[2] session info (JSON).
-- Returns the heartbeat time (ms).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return now
