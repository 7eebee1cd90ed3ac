-- Moves due timers of a scope into its work stream, each exactly once (the
-- ZREM and the XADD are one atomic step, so two replicas never both fire
-- the same timer), and tells when the next one is due.
-- KEYS[1] timers zset   KEYS[2] work stream
-- ARGV[1] now (ms)   ARGV[2] most timers to move
-- Returns {moved, due time (ms) of the first timer left, or -1 if none}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local sep = string.find(member, '\31', 1, true)
  if sep then
    local item = cjson.encode({kind = 'timer', job = string.sub(member, 1, sep - 1), key = string.sub(member, sep + 1)})
    redis.call('XADD', KEYS[2], '*', 'item', item)
  end
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local next_due = -1
if first[2] then
  next_due = tonumber(first[2])
end
return {#due, next_due}
