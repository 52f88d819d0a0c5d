-- Enqueue a job unless it exists: jobs are keyed by (batch, custom_id), so resubmission adds nothing.
-- KEYS[1] job hash   KEYS[2] payload string   KEYS[3] batch hash   KEYS[4] batch job list
-- KEYS[5] queued zset
-- ARGV[1] job_id   ARGV[2] batch_id   ARGV[3] custom_id   ARGV[4] request JSON   ARGV[5] now
-- ARGV[6] line number in the batch file
-- Returns 1 when enqueued, 0 when the job already existed.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'batch', ARGV[2], 'custom_id', ARGV[3], 'state', 'queued',
  'seq', 0, 'attempts', 0, 'polls', 0, 'submitted_at', ARGV[5], 'line', ARGV[6])
redis.call('SET', KEYS[2], ARGV[4])
redis.call('RPUSH', KEYS[4], ARGV[1])
redis.call('HINCRBY', KEYS[3], 'total', 1)
redis.call('HINCRBY', KEYS[3], 'n:queued', 1)
redis.call('ZADD', KEYS[5], ARGV[5], ARGV[1])
return 1
