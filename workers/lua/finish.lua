-- End a job and publish its record, exactly once: the atomic core of the result callback.
-- Whatever duplicates or redeliveries call this, only the first call for a job returns non-zero.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] held zset   KEYS[6] results stream   KEYS[7] batch codes hash
-- KEYS[8] deliveries zset (post-terminal callbacks still owed)   KEYS[9] the batch's parked zset
-- KEYS[10] in-flight zset   KEYS[11] the batch's jobs waiting for an in-flight slot
-- KEYS[12] (optional) the job's request payload   KEYS[13] (optional) ended batches zset
-- ARGV[1] job_id   ARGV[2] expected seq ('' accepts any)   ARGV[3] terminal state   ARGV[4] now
-- ARGV[5] cost in micro-USD   ARGV[6] error code ('' if none)   ARGV[7] stream max length
-- ARGV[8] the record as JSON, for the stream   ARGV[9] in-flight cap (0 = none)
-- ARGV[10] job key prefix   ARGV[11] '1' if every ended job owes a delivery (the workers
-- archive outputs), else only jobs of batches flagged ``deliver`` (webhooks, callbacks) do
-- ARGV[12..] field, value pairs for the job hash
-- Returns {ended, batch ended, callbacks owed, {admitted job_id, seq, ...}}: ended is 1 only
-- for the one call that ended the job, batch ended only for the call that ended its last job.
-- The job's budget reservation and in-flight slot are given back here; the slot goes at once
-- to the batch furthest below its share (lib/slots.lua; the admitted job's create is the
-- caller's to send; it is put in the due set so a lost send is swept).
-- Arguments are checked before the first write: a bad one must not leave half a step done.
local cost_arg = tonumber(ARGV[5])
if not cost_arg or cost_arg < 0 or cost_arg > 1e12 or cost_arg ~= math.floor(cost_arg)
    or not tonumber(ARGV[4]) or not tonumber(ARGV[7]) then
  return redis.error_reply('finish: cost, time and stream length must be bounded numbers')
end
local cur = redis.call('HMGET', KEYS[1], 'state', 'seq')
local state, seq = cur[1], cur[2]
if not state or state == 'succeeded' or state == 'failed' or state == 'cancelled' then
  return {0, 0, 0, {}}
end
if ARGV[2] ~= '' and seq ~= ARGV[2] then
  return {0, 0, 0, {}}
end
redis.call('HSET', KEYS[1], 'state', ARGV[3], 'seq', tonumber(seq) + 1, 'completed_at', ARGV[4])
for i = 12, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HINCRBY', KEYS[2], 'n:' .. state, -1)
redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[3], 1)
if tonumber(ARGV[5]) > 0 then
  redis.call('HINCRBY', KEYS[2], 'cost_micros', ARGV[5])
end
if ARGV[6] ~= '' then
  redis.call('HINCRBY', KEYS[7], ARGV[6], 1)
end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('ZREM', KEYS[9], ARGV[1])
local reserved = tonumber(redis.call('HGET', KEYS[1], 'reserved_micros') or 0)
if reserved > 0 then
  redis.call('HINCRBY', KEYS[2], 'reserved_micros', -reserved)
  redis.call('HSET', KEYS[1], 'reserved_micros', 0)
end
local deliver = ARGV[11] == '1' or redis.call('HGET', KEYS[2], 'deliver') == '1'
if deliver then
  redis.call('ZADD', KEYS[8], ARGV[4], ARGV[1])
end
-- The event's ID names the job and its round (wanq retry starts a new one), never a time: a
-- replay of this step after a crash (an AOF cut under appendfsync everysec) carries the same
-- ID, so consumers of the stream and of webhooks can drop the repeat.
local event_id = ARGV[1] .. ':' .. (redis.call('HGET', KEYS[1], 'round') or '1')
redis.call('HSET', KEYS[1], 'event_id', event_id)
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*',
  'job_id', ARGV[1], 'state', ARGV[3], 'event_id', event_id, 'record', ARGV[8])
-- Payload release (issue 12): a succeeded or cancelled job needs its request no more, so the
-- payload and its image references go in this same step (an image goes with its last
-- reference). A failed job keeps both until its batch is purged: wanq retry re-runs it.
if KEYS[12] and ARGV[3] ~= S_FAILED then
  redis.call('DEL', KEYS[12])
  local held = redis.call('HGET', KEYS[1], 'images')
  if held then
    for image in string.gmatch(held, '[^,]+') do
      if redis.call('HINCRBY', image, 'refs', -1) <= 0 then
        redis.call('DEL', image)
      end
    end
    redis.call('HDEL', KEYS[1], 'images')
  end
end
local b = redis.call('HMGET', KEYS[2], 'total', 'n:succeeded', 'n:failed', 'n:cancelled')
local ended = tonumber(b[2] or 0) + tonumber(b[3] or 0) + tonumber(b[4] or 0)
slot_free(ARGV[1], KEYS[2])
if redis.call('ZREM', KEYS[11], ARGV[1]) == 1 and redis.call('EXISTS', KEYS[11]) == 0 then
  redis.call('ZREM', K_READY, redis.call('HGET', KEYS[1], 'batch'))
end
local admitted = admit(effective_cap(ARGV[9]), ARGV[4], 1)
local owed = deliver and 1 or 0
local batch_ended = 0
if tonumber(b[1] or 0) == ended and redis.call('HSETNX', KEYS[2], 'finished_at', ARGV[4]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'endings', 1)  -- names the batch.ended event (no time in it)
  if deliver then
    redis.call('ZADD', KEYS[8], ARGV[4], 'batch:' .. redis.call('HGET', KEYS[1], 'batch'))
  end
  batch_ended = 1
  if KEYS[13] then -- retention counts from here (issue 12)
    redis.call('ZADD', KEYS[13], ARGV[4], redis.call('HGET', KEYS[1], 'batch'))
  end
end
return {1, batch_ended, owed, admitted}
