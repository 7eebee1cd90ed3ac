-- Extend this delivery's claim while its handler is still running, so a slow
-- handler is not mistaken for a crashed one.
-- KEYS[1]: the dedupe key; ARGV[1]: the delivery token; ARGV[2]: lease ms
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
