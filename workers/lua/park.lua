-- Park a job: it waits in Redis, holding no message and no in-flight slot, until its account
-- or batch lets it go on. One script, so no crash can leave a waiting job in no set.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] the zset it parks in (held, the batch's ready set, or its parked set)
-- KEYS[6] in-flight zset (its slot is freed through lib/slots.lua)
-- ARGV[1] job_id   ARGV[2] expected seq   ARGV[3] hold reason   ARGV[4] detail   ARGV[5] now
-- Returns 1 if parked, 0 if the job moved on (stale seq or a state that cannot park).
local job_key, batch_key, due_key, queued_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local parked_key, inflight_key = KEYS[5], KEYS[6]
local job_id, expected_seq, reason, detail, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]

local cur = redis.call('HMGET', job_key, 'state', 'seq')
local state, seq = cur[1], cur[2]
if not state or seq ~= expected_seq then
  return 0
end
if not (state == S_QUEUED or state == S_CREATING or state == S_WAITING) then
  return 0
end
redis.call('HSET', job_key, 'state', S_WAITING, 'seq', tonumber(seq) + 1, 'hold', reason,
  'last_error', detail)
if state ~= S_WAITING then
  redis.call('HINCRBY', batch_key, 'n:' .. state, -1)
  redis.call('HINCRBY', batch_key, 'n:' .. S_WAITING, 1)
end
redis.call('ZREM', due_key, job_id)
redis.call('ZREM', K_POLLS, job_id)
redis.call('ZREM', queued_key, job_id)
if reason == H_SLOT then
  local where = redis.call('HMGET', job_key, 'batch', 'line')
  wait_for_slot(job_id, where[1], tonumber(where[2] or 0) or 0)
else
  redis.call('ZADD', parked_key, 'NX', now, job_id)
end
slot_free(job_id, batch_key)
return 1
