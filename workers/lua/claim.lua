-- Claim a job for creation: compare-and-set on seq, then the batch's controls, then its budget.
-- The budget reserves the job's worst-case cost until the job ends (finish.lua gives it back),
-- so spent cost plus the worst case of everything in flight never passes the cap.
-- A cluster-wide cap on remote tasks in flight is checked here too: a job holds its place in
-- the in-flight set from its claim until it ends or is parked.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] in-flight zset
-- ARGV[1] job_id   ARGV[2] expected seq   ARGV[3] now   ARGV[4] when the create is overdue
-- ARGV[5] the job's worst-case cost in micro-USD   ARGV[6] '1' if the last claim died mid-create
-- ARGV[7] in-flight cap (0 = none)
-- Returns {1, new seq, previous state}, or {0, seq, why} with why one of
-- 'stale' (moved on), 'cancelled', 'paused' (batch paused), 'budget' (cap reached) and
-- 'full' (the in-flight cap is reached).
local cur = redis.call('HMGET', KEYS[1], 'state', 'seq', 'reserved_micros')
local state, seq = cur[1], cur[2]
if not state or seq ~= ARGV[2] or not (state == 'queued' or state == 'waiting' or state == 'creating') then
  return {0, tonumber(seq or -1), 'stale'}
end
local control = redis.call('HMGET', KEYS[2], 'state', 'max_cost_micros', 'cost_micros', 'reserved_micros')
if control[1] == 'cancelled' then
  return {0, tonumber(seq), 'cancelled'}
end
if control[1] == 'paused' or control[1] == 'budget' then
  return {0, tonumber(seq), 'paused'}
end
local cap = tonumber(ARGV[7])
local holds_slot = redis.call('ZSCORE', KEYS[5], ARGV[1])
if cap > 0 and not holds_slot and redis.call('ZCARD', KEYS[5]) >= cap then
  return {0, tonumber(seq), 'full'}
end
if control[2] and tonumber(cur[3] or 0) == 0 then
  local committed = tonumber(control[3] or 0) + tonumber(control[4] or 0)
  if committed + tonumber(ARGV[5]) > tonumber(control[2]) then
    redis.call('HSET', KEYS[2], 'state', 'budget')
    return {0, tonumber(seq), 'budget'}
  end
  redis.call('HINCRBY', KEYS[2], 'reserved_micros', ARGV[5])
  redis.call('HSET', KEYS[1], 'reserved_micros', ARGV[5])
end
if not holds_slot then
  redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
end
local new_seq = tonumber(seq) + 1
redis.call('HSET', KEYS[1], 'state', 'creating', 'seq', new_seq, 'claimed_at', ARGV[3], 'hold', '')
redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if ARGV[6] == '1' then
  redis.call('HINCRBY', KEYS[1], 'create_window_losses', 1)
end
if state ~= 'creating' then
  redis.call('HINCRBY', KEYS[2], 'n:' .. state, -1)
  redis.call('HINCRBY', KEYS[2], 'n:creating', 1)
end
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
return {1, new_seq, state}
