-- Re-open a job that failed for good, for another round (wanq retry). Its earlier rounds stay
-- in the record's history; successes are never touched.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] queued zset   KEYS[4] batch codes hash
-- ARGV[1] job_id   ARGV[2] now   ARGV[3] error codes to re-open, comma-separated ('' = any)
-- Returns the new seq, or -1 when the job is not a failure to re-open.
local cur = redis.call('HMGET', KEYS[1], 'state', 'seq', 'error', 'attempts', 'remote_task_id',
  'completed_at', 'history')
if cur[1] ~= 'failed' then
  return -1
end
local err = cur[3] and cur[3] ~= '' and cjson.decode(cur[3]) or {}
local code = err['code'] or ''
if ARGV[3] ~= '' and not string.find(',' .. ARGV[3] .. ',', ',' .. code .. ',', 1, true) then
  return -1
end
local history = (cur[7] and cur[7] ~= '') and cjson.decode(cur[7]) or {}
table.insert(history, {error = err, attempts = tonumber(cur[4] or 0),
  remote_task_id = cur[5] or '', completed_at = cur[6] or ''})
local new_seq = tonumber(cur[2]) + 1
redis.call('HSET', KEYS[1], 'state', 'queued', 'seq', new_seq, 'attempts', 0,
  'history', cjson.encode(history), 'error', '', 'remote_task_id', '', 'completed_at', '',
  'created_at', '', 'first_poll_at', '', 'last_miss_at', '', 'poll_errors', 0, 'hold', '',
  'last_error', '', 'submitted_at', ARGV[2])
redis.call('HINCRBY', KEYS[2], 'n:failed', -1)
redis.call('HINCRBY', KEYS[2], 'n:queued', 1)
if code ~= '' then
  redis.call('HINCRBY', KEYS[4], code, -1)
end
redis.call('HDEL', KEYS[2], 'finished_at', 'final_sent')
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[1])
return new_seq
