-- Give up a claim after a failed attempt, so the message is not marked as
-- seen and a redelivery processes it again. Only the claimer's own token is
-- removed: a claim that expired and was taken over stays with its new owner.
-- KEYS[1]: the dedupe key; ARGV[1]: the delivery token
if redis.call('GET', KEYS[1]) == 'p:' .. ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
