-- Sessions whose last heartbeat is older than ARGV[1] ms (Redis clock).
-- KEYS[1] sessions zset; KEYS[2] session info hash.
-- Returns a flat list: client id, session info (JSON, or '' if unknown), …
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
