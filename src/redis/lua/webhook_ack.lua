-- Takes the delivered (or dead-lettered) head off a webhook queue if it is
-- still the one delivered (a replica that lost the sink's lock while
-- sending must not remove another delivery), forgets its failed attempts,
-- and drops the queue from the pending set when it is empty; atomic with
-- `webhook_enqueue.lua`, so a delivery queued meanwhile keeps its queue
-- pending.
-- KEYS[1] queue (list), KEYS[2] pending queues (set), KEYS[3] attempts
-- (hash); ARGV[1] the queue's member name, ARGV[2] the delivery sent ('':
-- only tidy up an empty queue). Returns the deliveries left.
if ARGV[2] ~= '' and redis.call('LINDEX', KEYS[1], 0) == ARGV[2] then
  redis.call('LPOP', KEYS[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
local left = redis.call('LLEN', KEYS[1])
if left == 0 then
  redis.call('SREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
end
return left
