-- Appends an entry to a job's audit trail if the job exists: a refused
-- command is recorded where its job is, and a command for an unknown job
-- leaves no stream behind. Both keys share the scope's hash tag.
--
-- KEYS[1] job hash   KEYS[2] the job's audit stream
-- ARGV[1] the audit entry (JSON, `jobs::audit`)
-- Returns 1 if appended, 0 if the job does not exist.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', 10000, '*', 'e', ARGV[1])
return 1
