-- Re-open a job that failed for good, for another round (wanq retry). Its earlier rounds stay
-- in the record's history; successes are never touched.
-- A job that failed only because its status checks ran out (ARGV[4], 001021098) while its
-- remote task is known is followed again, not created again: that task may have completed
-- (and been billed) meanwhile. Any other failure starts over: queued, or waiting for an
-- in-flight slot when the cluster or the batch has a cap (lib/slots.lua). Either way the job
-- leaves the set of abandoned tasks the sweeper follows (lib/abandoned.lua).
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] queued zset   KEYS[4] batch codes hash
-- ARGV[1] job_id   ARGV[2] now   ARGV[3] error codes to re-open, comma-separated ('' = any)
-- ARGV[4] the code whose jobs are followed again   ARGV[5] in-flight cap (0 = none)
-- Returns {new seq, 'poll' | 'create' | 'wait'} ('wait': admission sends the create), or
-- {-1, ''} when the job is not a failure to re-open.
local job_key, batch_key, queued_key, codes_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_id, now, codes, follow_code = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cap = effective_cap(ARGV[5])

local cur = redis.call('HMGET', job_key, 'state', 'seq', 'error', 'attempts', 'remote_task_id',
  'completed_at', 'history', 'batch', 'line')
if cur[1] ~= S_FAILED then
  return {-1, ''}
end
local err = cur[3] and cur[3] ~= '' and cjson.decode(cur[3]) or {}
local code = err['code'] or ''
if codes ~= '' and not string.find(',' .. codes .. ',', ',' .. code .. ',', 1, true) then
  return {-1, ''}
end
local history = (cur[7] and cur[7] ~= '') and cjson.decode(cur[7]) or {}
table.insert(history, {error = err, attempts = tonumber(cur[4] or 0),
  remote_task_id = cur[5] or '', completed_at = cur[6] or ''})
local new_seq = tonumber(cur[2]) + 1
local round = tonumber(redis.call('HGET', job_key, 'round') or 1) + 1
redis.call('HSET', job_key, 'round', round)
redis.call('HINCRBY', batch_key, 'n:' .. S_FAILED, -1)
if code ~= '' then
  redis.call('HINCRBY', codes_key, code, -1)
end
redis.call('HDEL', batch_key, 'finished_at', 'final_sent')

-- A task the sweeper follows for its cost (lib/abandoned.lua) is no longer its to follow. When
-- this round polls the same task, the poll counts its cost: the estimate leaves the unseen
-- money. When it starts over, the old task is given up: its estimate stays unseen, once.
local follow = code == follow_code and cur[5] and cur[5] ~= ''
if abandoned_drop(job_id, job_key, batch_key, follow) == 1 then
  redis.call('HINCRBY', K_STATS, follow and 'abandoned_reopened' or 'abandoned_given_up', 1)
end

if follow then
  redis.call('HSET', job_key, 'state', S_RUNNING, 'seq', new_seq, 'history', cjson.encode(history),
    'error', '', 'completed_at', '', 'created_at', now, 'poll_errors', 0, 'hold', '',
    'last_error', '')
  redis.call('HINCRBY', batch_key, 'n:' .. S_RUNNING, 1)
  slot_take(job_id, batch_key, now)
  redis.call('ZADD', K_DUE, now, job_id)
  return {new_seq, 'poll'}
end

redis.call('HSET', job_key, 'state', S_QUEUED, 'seq', new_seq, 'attempts', 0,
  'history', cjson.encode(history), 'error', '', 'remote_task_id', '', 'completed_at', '',
  'created_at', '', 'first_poll_at', '', 'last_miss_at', '', 'poll_errors', 0, 'hold', '',
  'last_error', '', 'submitted_at', now)
redis.call('HINCRBY', batch_key, 'n:' .. S_QUEUED, 1)
if cap > 0 or tonumber(redis.call('HGET', batch_key, 'max_in_flight') or 0) > 0 then
  wait_for_slot(job_id, cur[8], tonumber(cur[9] or 0) or 0)
  return {new_seq, 'wait'}
end
redis.call('ZADD', queued_key, now, job_id)
return {new_seq, 'create'}
