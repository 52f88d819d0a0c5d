-- End a job and publish its record, exactly once: the atomic core of the result callback.
-- Whatever duplicates or redeliveries call this, only the first call for a job returns non-zero.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] held zset   KEYS[6] results stream   KEYS[7] batch codes hash
-- KEYS[8] deliveries zset (post-terminal callbacks still owed)   KEYS[9] the batch's parked zset
-- KEYS[10] in-flight zset (freed through lib/slots.lua)   KEYS[11] the batch's jobs waiting for an in-flight slot
-- KEYS[12] (optional) the job's request payload   KEYS[13] (optional) ended batches zset
-- (K_ABANDONED: the remote tasks followed for their cost, see lib/abandoned.lua)
-- ARGV[1] job_id   ARGV[2] expected seq ('' accepts any)   ARGV[3] terminal state   ARGV[4] now
-- ARGV[5] cost in micro-USD   ARGV[6] error code ('' if none)   ARGV[7] stream max length
-- ARGV[8] the record as JSON, for the stream   ARGV[9] in-flight cap (0 = none)
-- ARGV[10] job key prefix   ARGV[11] '1' if every ended job owes a delivery (the workers
-- archive outputs), else only jobs of batches flagged ``deliver`` (webhooks, callbacks) do
-- ARGV[12] images the provider made but whose cost it did not say in a number we can use
-- (a hostile ``usage.cost``: "1e300", "Infinity"): priced at the higher of ARGV[13] (the
-- configured unit price, micro-USD) and the batch's learned price, as estimated-unseen money
-- (``unseen_micros``), which the budget counts: billed money is never counted as $0
-- ARGV[14] the delivery tag of the task message the caller runs, acknowledged here whether the
-- job ends or the call is stale ('' for none; lib/acks.lua)
-- ARGV[15] JSON list of commands run only by the call that ends the job (workers.store.EndWrites:
-- the ended job's histograms and generation time, counted once), each of END_WRITES; their
-- errors (a key of another type) are ignored: counters never stop a job from ending
-- ARGV[16..] field, value pairs for the job hash
-- Returns {ended, batch ended, callbacks owed, {admitted job_id, seq, ...}}: ended is 1 only
-- for the one call that ended the job, batch ended only for the call that ended its last job.
-- The job's budget reservation and in-flight slot are given back here; the slot goes at once
-- to the batch furthest below its share (lib/slots.lua; the admitted job's create is the
-- caller's to send; it is put in the due set so a lost send is swept).
local job_key, batch_key, due_key, queued_key, held_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local results_key, codes_key, deliver_key, parked_key = KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local ready_set, payload_key, ended_key = KEYS[11], KEYS[12], KEYS[13]
local job_id, expected_seq, final_state, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local cost, error_code, stream_max, record = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local cap, always_deliver = ARGV[9], ARGV[11] == '1'
local unpriced, unit_micros = tonumber(ARGV[12]), tonumber(ARGV[13])
local delivery_tag = ARGV[14]
local END_WRITES = {HINCRBY = true, HINCRBYFLOAT = true, LPUSH = true, LTRIM = true}
local end_writes = cjson.decode(ARGV[15])
local FIRST_FIELD = 16

-- Arguments are checked before the first write: a bad one must not leave half a step done.
local cost_arg = tonumber(cost)
if not cost_arg or cost_arg < 0 or cost_arg > 1e12 or cost_arg ~= math.floor(cost_arg)
    or not tonumber(now) or not tonumber(stream_max)
    or not unpriced or unpriced < 0 or unpriced > 1000 or unpriced ~= math.floor(unpriced)
    or not unit_micros or unit_micros < 0 or unit_micros > 1e12 then
  return redis.error_reply('finish: cost, time and stream length must be bounded numbers')
end
for _, command in ipairs(end_writes) do
  if not END_WRITES[command[1]] then
    return redis.error_reply('finish: not a write for an ended job: ' .. tostring(command[1]))
  end
end
local cur = redis.call('HMGET', job_key, 'state', 'seq', 'remote_task_id', 'abandoned_task',
  'abandoned_cost_micros', 'worst_images', 'worst_micros')
local state, seq, remote = cur[1], cur[2], cur[3] or ''
if not state or state == S_SUCCEEDED or state == S_FAILED or state == S_CANCELLED
    or (expected_seq ~= '' and seq ~= expected_seq) then
  ack_message(delivery_tag)
  return {0, 0, 0, {}}
end
redis.call('HSET', job_key, 'state', final_state, 'seq', tonumber(seq) + 1, 'completed_at', now)
for i = FIRST_FIELD, #ARGV, 2 do
  redis.call('HSET', job_key, ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', batch_key, 'n:' .. state, -1)
redis.call('HINCRBY', batch_key, 'n:' .. final_state, 1)
-- A remote task whose cost the sweeper already learned (the job was abandoned, then re-opened
-- to follow the same task) is not counted twice.
local counted = cost_arg
if remote ~= '' and cur[4] == remote and cur[5] then
  counted = math.max(0, counted - (tonumber(cur[5]) or 0))
end
if counted > 0 then
  redis.call('HINCRBY', batch_key, 'cost_micros', counted)
end
if unpriced > 0 then
  local estimate = math.floor(unpriced * batch_price(batch_key, unit_micros))
  redis.call('HSET', job_key, 'unseen_micros', estimate)
  redis.call('HINCRBY', batch_key, 'unseen_micros', estimate)
end
if error_code ~= '' then
  redis.call('HINCRBY', codes_key, error_code, 1)
end
redis.call('ZREM', due_key, job_id)
redis.call('ZREM', K_POLLS, job_id)
redis.call('ZREM', queued_key, job_id)
redis.call('ZREM', held_key, job_id)
redis.call('ZREM', parked_key, job_id)
local reserved = tonumber(redis.call('HGET', job_key, 'reserved_micros') or 0)
if reserved > 0 then
  redis.call('HINCRBY', batch_key, 'reserved_micros', -reserved)
  redis.call('HSET', job_key, 'reserved_micros', 0)
end
-- Money spent is money counted (issue 13): a job that stops following a remote task that may
-- run on and be billed (its status checks ran out, its answers stayed unreadable, or it was
-- cancelled while the task ran) leaves the task to the sweeper, which learns its cost
-- (settle.lua); until then its worst case is the batch's unseen money.
if remote ~= '' and ((final_state == S_FAILED and STOPPED_FOLLOWING[error_code])
    or (final_state == S_CANCELLED and state == S_RUNNING)) then
  local price = tonumber(redis.call('HGET', batch_key, 'price_micros') or 0) or 0
  local estimate = math.max(reserved, tonumber(cur[7] or 0) or 0,
    (tonumber(cur[6] or 0) or 0) * price)
  abandoned_add(job_id, job_key, batch_key, remote, now, math.floor(estimate))
end
local deliver = always_deliver or redis.call('HGET', batch_key, 'deliver') == '1'
if deliver then
  redis.call('ZADD', deliver_key, now, job_id)
end
-- The event's ID names the job and its round (wanq retry starts a new one), never a time: a
-- replay of this step after a crash (an AOF cut under appendfsync everysec) carries the same
-- ID, so consumers of the stream and of webhooks can drop the repeat.
local event_id = job_id .. ':' .. (redis.call('HGET', job_key, 'round') or '1')
redis.call('HSET', job_key, 'event_id', event_id)
redis.call('XADD', results_key, 'MAXLEN', '~', stream_max, '*',
  'job_id', job_id, 'state', final_state, 'event_id', event_id, 'record', record)
-- Payload release (issue 12): a succeeded or cancelled job needs its request no more, so the
-- payload and its image references go in this same step (an image goes with its last
-- reference). A failed job keeps both until its batch is purged: wanq retry re-runs it.
if payload_key and final_state ~= S_FAILED then
  redis.call('DEL', payload_key)
  job_images_release(job_key)
end
local b = redis.call('HMGET', batch_key, 'total', 'n:succeeded', 'n:failed', 'n:cancelled')
local ended = tonumber(b[2] or 0) + tonumber(b[3] or 0) + tonumber(b[4] or 0)
slot_free(job_id, batch_key)
if redis.call('ZREM', ready_set, job_id) == 1 and redis.call('EXISTS', ready_set) == 0 then
  redis.call('ZREM', K_READY, redis.call('HGET', job_key, 'batch'))
end
local admitted = admit(effective_cap(cap), now, 1)
local owed = deliver and 1 or 0
local batch_ended = 0
if tonumber(b[1] or 0) == ended and redis.call('HSETNX', batch_key, 'finished_at', now) == 1 then
  redis.call('HINCRBY', batch_key, 'endings', 1)  -- names the batch.ended event (no time in it)
  if deliver then
    redis.call('ZADD', deliver_key, now, BATCH_TARGET .. redis.call('HGET', job_key, 'batch'))
  end
  batch_ended = 1
  if ended_key then -- retention counts from here (issue 12)
    redis.call('ZADD', ended_key, now, redis.call('HGET', job_key, 'batch'))
  end
end
for _, command in ipairs(end_writes) do
  redis.pcall(unpack(command))
end
ack_message(delivery_tag)
return {1, batch_ended, owed, admitted}
