-- Claim a (source, id) pair for processing.
-- KEYS[1]: the dedupe key of the message
-- ARGV[1]: this delivery's token (unique per delivery attempt)
-- ARGV[2]: claim lease in milliseconds (how long a crashed claimer blocks others)
-- Returns {'claimed'}, {'duplicate', reply} (processed before; reply is the
-- stored reply, '' when there was none) or {'busy'} (another delivery of
-- the same message is being processed right now).
-- Atomic so that two replicas handed the same message (shared subscription
-- redelivery) cannot both claim it.
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], 'p:' .. ARGV[1], 'PX', ARGV[2])
  return {'claimed'}
end
if v == 'done' then
  return {'duplicate', ''}
end
if string.sub(v, 1, 5) == 'done:' then
  return {'duplicate', string.sub(v, 6)}
end
return {'busy'}
