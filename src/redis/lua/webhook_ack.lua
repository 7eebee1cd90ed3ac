-- Takes the delivered (or dead-lettered) head off a webhook queue, forgets
-- its failed attempts, and drops the queue from the pending set when it is
-- empty; atomic with `webhook_enqueue.lua`, so a delivery queued meanwhile
-- keeps its queue pending.
-- KEYS[1] queue (list), KEYS[2] pending queues (set), KEYS[3] attempts
-- (hash); ARGV[1] the queue's member name. Returns the deliveries left.
redis.call('LPOP', KEYS[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local left = redis.call('LLEN', KEYS[1])
if left == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
end
return left
