-- Queues webhook deliveries of a batch of job changes and moves the
-- sink's cursor past them, as one step: a crash never loses a change
-- (the cursor would not have moved) nor queues one twice (it has).
-- KEYS[1] cursor (string), KEYS[2] pending queues (set),
-- KEYS[3..] one queue (list) per delivery;
-- ARGV[1] the new cursor, then per delivery: its queue's member name in
-- KEYS[2], the delivery.
for i = 3, #KEYS do
  local a = 2 * (i - 3) + 2
  redis.call('RPUSH', KEYS[i], ARGV[a + 1])
  redis.call('SADD', KEYS[2], ARGV[a])
end
redis.call('SET', KEYS[1], ARGV[1])
return #KEYS - 2
