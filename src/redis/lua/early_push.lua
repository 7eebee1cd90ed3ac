-- Keeps an equipment event for later, unless someone can take it now: the
-- check and the push are one atomic step, so an execution that is created
-- (or starts waiting) right after always finds the event in the list.
-- KEYS[1] exec hash of the job the event names (any absent key if none)
-- KEYS[2] waiting zset of the event's type   KEYS[3] early list
-- ARGV[1] event JSON   ARGV[2] most events kept
-- Returns 'EXEC' (the named job runs), 'WAITING' (a job waits), or 'KEPT'.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 'EXEC'
end
if redis.call('ZCARD', KEYS[2]) > 0 then
  return 'WAITING'
end
redis.call('RPUSH', KEYS[3], ARGV[1])
redis.call('LTRIM', KEYS[3], -tonumber(ARGV[2]), -1)
return 'KEPT'
