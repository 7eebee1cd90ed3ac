-- Takes or extends a singleton lock.
-- KEYS[1] lock key; ARGV[1] owner; ARGV[2] ttl (ms).
-- Returns 1 when the caller owns the lock afterwards, else 0.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
