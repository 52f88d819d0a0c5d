-- Claim a job for creation: compare-and-set on seq, then the batch's controls, then its budget.
-- The budget reserves the job's worst-case cost until the job ends (finish.lua gives it back),
-- so spent cost plus the worst case of everything in flight never passes the cap.
-- A cluster-wide cap on remote tasks in flight (and the batch's own max_in_flight) is checked
-- here too: a job admitted to a slot (lib/slots.lua) already holds it; any other takes one now
-- if one is free. It keeps the slot until it ends or is parked.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] in-flight zset
-- ARGV[1] job_id   ARGV[2] expected seq   ARGV[3] now   ARGV[4] when the create is overdue
-- ARGV[5] the job's worst-case cost in micro-USD   ARGV[6] '1' if the last claim died mid-create
-- ARGV[7] in-flight cap (0 = none)
-- Returns {1, new seq, previous state}, or {0, seq, why} with why one of
-- 'stale' (moved on), 'cancelled', 'paused' (batch paused), 'budget' (cap reached) and
-- 'full' (the in-flight cap, or the batch's, is reached).
local job_key, batch_key, due_key, queued_key, inflight_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_id, expected_seq, now, overdue_at = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local worst_micros, died_in_window, cap = ARGV[5], ARGV[6], effective_cap(ARGV[7])

local cur = redis.call('HMGET', job_key, 'state', 'seq', 'reserved_micros')
local state, seq = cur[1], cur[2]
if not state or seq ~= expected_seq or not (state == S_QUEUED or state == S_WAITING or state == S_CREATING) then
  return {0, tonumber(seq or -1), 'stale'}
end
local control = redis.call('HMGET', batch_key, 'state', 'max_cost_micros', 'cost_micros', 'reserved_micros')
if control[1] == B_CANCELLED then
  return {0, tonumber(seq), 'cancelled'}
end
if control[1] == B_PAUSED or control[1] == B_BUDGET then
  return {0, tonumber(seq), B_PAUSED}
end
local holds_slot = redis.call('ZSCORE', inflight_key, job_id)
if not holds_slot and batch_full(batch_key, cap) then
  return {0, tonumber(seq), 'full'}
end
if control[2] and tonumber(cur[3] or 0) == 0 then
  local committed = tonumber(control[3] or 0) + tonumber(control[4] or 0)
  if committed + tonumber(worst_micros) > tonumber(control[2]) then
    redis.call('HSET', batch_key, 'state', B_BUDGET)
    return {0, tonumber(seq), B_BUDGET}
  end
  redis.call('HINCRBY', batch_key, 'reserved_micros', worst_micros)
  redis.call('HSET', job_key, 'reserved_micros', worst_micros)
end
if not holds_slot then
  slot_take(job_id, batch_key, now)
end
local new_seq = tonumber(seq) + 1
redis.call('HSET', job_key, 'state', S_CREATING, 'seq', new_seq, 'claimed_at', now, 'hold', '')
redis.call('HINCRBY', job_key, 'attempts', 1)
if died_in_window == '1' then
  redis.call('HINCRBY', job_key, 'create_window_losses', 1)
end
if state ~= S_CREATING then
  redis.call('HINCRBY', batch_key, 'n:' .. state, -1)
  redis.call('HINCRBY', batch_key, 'n:' .. S_CREATING, 1)
end
redis.call('ZREM', queued_key, job_id)
redis.call('ZADD', due_key, overdue_at, job_id)
return {1, new_seq, state}
