-- Puts the dispatches held back while a job was Interrupted into the work
-- stream again, if the job is Running now. Atomic with the state check: a
-- dispatch held after this ran finds the job not Running, and the next
-- Resume's change entry runs this again.
-- All keys share the scope's hash tag.
--
-- KEYS[1] job hash   KEYS[2] the job's held dispatches (list)
-- KEYS[3] work stream
-- ARGV[1] Running's main state number
-- Returns the number of dispatches put back.
local state = redis.call('HGET', KEYS[1], 'state')
local main = state and string.match(state, '^(%d+)')
if main ~= ARGV[1] then
  return 0
end
local items = redis.call('LRANGE', KEYS[2], 0, -1)
for _, item in ipairs(items) do
  redis.call('XADD', KEYS[3], '*', 'item', item)
end
redis.call('DEL', KEYS[2])
return #items
