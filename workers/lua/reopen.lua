-- Re-open a job that failed for good, for another round (wanq retry). Its earlier rounds stay
-- in the record's history; successes are never touched.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] queued zset   KEYS[4] batch codes hash
-- ARGV[1] job_id   ARGV[2] now   ARGV[3] error codes to re-open, comma-separated ('' = any)
-- Returns the new seq, or -1 when the job is not a failure to re-open.
local job_key, batch_key, queued_key, codes_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, now, codes = ARGV[1], ARGV[2], ARGV[3]

local cur = redis.call('HMGET', job_key, 'state', 'seq', 'error', 'attempts', 'remote_task_id',
  'completed_at', 'history')
if cur[1] ~= S_FAILED then
  return -1
end
local err = cur[3] and cur[3] ~= '' and cjson.decode(cur[3]) or {}
local code = err['code'] or ''
if codes ~= '' and not string.find(',' .. codes .. ',', ',' .. code .. ',', 1, true) then
  return -1
end
local history = (cur[7] and cur[7] ~= '') and cjson.decode(cur[7]) or {}
table.insert(history, {error = err, attempts = tonumber(cur[4] or 0),
  remote_task_id = cur[5] or '', completed_at = cur[6] or ''})
local new_seq = tonumber(cur[2]) + 1
redis.call('HSET', job_key, 'state', S_QUEUED, 'seq', new_seq, 'attempts', 0,
  'history', cjson.encode(history), 'error', '', 'remote_task_id', '', 'completed_at', '',
  'created_at', '', 'first_poll_at', '', 'last_miss_at', '', 'poll_errors', 0, 'hold', '',
  'last_error', '', 'submitted_at', now)
redis.call('HINCRBY', batch_key, 'n:' .. S_FAILED, -1)
redis.call('HINCRBY', batch_key, 'n:' .. S_QUEUED, 1)
if code ~= '' then
  redis.call('HINCRBY', codes_key, code, -1)
end
redis.call('HDEL', batch_key, 'finished_at', 'final_sent')
redis.call('ZADD', queued_key, now, job_id)
return new_seq
