-- Claim a job for creation: compare-and-set on seq, then the account, the batch's controls,
-- the in-flight cap and the budget.
-- The budget reserves the job's worst-case cost until the job ends (finish.lua gives it back),
-- priced at the higher of the configured unit price and the price the provider was seen to
-- charge this batch (price.lua); spent, reserved and possibly-duplicated (unseen) cost plus
-- this job's worst case never pass the cap. Until a budgeted batch has seen its price, one
-- job at a time is in flight ('pricing'): a provider dearer than configured is found out by
-- one job, not by the whole cap.
-- A job admitted to a slot (lib/slots.lua) already holds it; any other takes one if free.
-- Times are Redis's own (TIME): workers whose clocks disagree still agree on "busy".
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] (optional) the job's payload string, read back with the answer (see below)
-- ARGV[1] job_id   ARGV[2] expected seq   ARGV[3] create window, seconds (a claim older than
-- this died between POST and storing the ID)   ARGV[4] the job's worst-case image count, or ''
-- for the one the submission stored ('worst_images')   ARGV[5] configured unit price,
-- micro-USD per image   ARGV[6] in-flight cap (0 = none)   ARGV[7] '1' for the account probe
-- (the one create allowed while the account is blocked)   ARGV[8] '1' to refuse while 429s
-- have tightened the cluster's pace ('pace': the caller takes a pace slot first)
-- Returns {1, new seq, previous state}, or {0, seq, why} with why one of 'stale' (moved on),
-- 'unpriced' (no worst case given or stored: the caller works it out from the request),
-- 'pace', 'busy' (another worker is creating it now), 'account' (the account is blocked),
-- 'cancelled', 'paused', 'budget', 'full' (the in-flight cap, or the batch's) and 'pricing'.
-- With KEYS[5] the answer goes on with what the caller would have read first, as the claim
-- leaves it: {..., job hash (flat), payload, account block (flat), pace tightened (0/1)}:
-- one round trip for the read and the claim.
-- A previous claim that died mid-create is counted here, once, whatever the answer: its
-- remote task may exist (a possible duplicate), priced into the batch's 'unseen_micros'.
local job_key, batch_key, due_key, queued_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local payload_key = KEYS[5]
local job_id, expected_seq = ARGV[1], ARGV[2]
local window, worst_images = tonumber(ARGV[3]), tonumber(ARGV[4])
local unit_micros, cap, probe = tonumber(ARGV[5]), effective_cap(ARGV[6]), ARGV[7] == '1'
local check_pace = ARGV[8] == '1'
if ARGV[4] == '' then
  worst_images = tonumber(redis.call('HGET', job_key, 'worst_images') or '')
end
if not (window and unit_micros) or (worst_images and worst_images < 0) or unit_micros < 0 then
  return redis.error_reply('claim: window, images and price must be non-negative numbers')
end

local function answer(claimed, new_seq, why)
  local reply = {claimed, new_seq, why}
  if payload_key then
    reply[4] = redis.call('HGETALL', job_key)
    reply[5] = redis.call('GET', payload_key) or false
    reply[6] = redis.call('HGETALL', K_ACCOUNT)
    reply[7] = redis.call('EXISTS', K_PACE_RATE)
  end
  return reply
end

local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000

local cur = redis.call('HMGET', job_key, 'state', 'seq', 'reserved_micros', 'claimed_at',
  'loss_seq')
local state, seq = cur[1], cur[2]
if not state or seq ~= expected_seq or not (state == S_QUEUED or state == S_WAITING or state == S_CREATING) then
  return answer(0, tonumber(seq or -1), 'stale')
end
if not worst_images then
  return answer(0, tonumber(seq), 'unpriced')
end
if check_pace and redis.call('EXISTS', K_PACE_RATE) == 1 then
  return answer(0, tonumber(seq), 'pace')
end
local control = redis.call('HMGET', batch_key, 'state', 'max_cost_micros', 'cost_micros',
  'reserved_micros', 'unseen_micros', 'price_micros')
local price = price_of(unit_micros, control[6])
if state == S_CREATING then
  if now - tonumber(cur[4] or 0) < window then
    return answer(0, tonumber(seq), 'busy')
  end
  if cur[5] ~= seq then  -- died between POST and storing the ID: count it once
    local unseen = tonumber(cur[3] or 0)
    if unseen <= 0 then
      unseen = worst_images * price
    end
    redis.call('HSET', job_key, 'loss_seq', seq)
    count_possible_duplicate(job_key, batch_key, 'create_window_losses', unseen)
  end
end
if redis.call('HEXISTS', K_ACCOUNT, 'state') == 1 and not probe then
  return answer(0, tonumber(seq), 'account')
end
if control[1] == B_CANCELLED then
  return answer(0, tonumber(seq), 'cancelled')
end
if control[1] == B_PAUSED or control[1] == B_BUDGET then
  return answer(0, tonumber(seq), B_PAUSED)
end
local holds_slot = redis.call('ZSCORE', K_INFLIGHT, job_id)
if not holds_slot and batch_full(batch_key, cap) then
  return answer(0, tonumber(seq), 'full')
end
if control[2] and tonumber(cur[3] or 0) == 0 then
  local reserved = tonumber(control[4] or 0)
  if not control[6] and reserved > 0 then
    return answer(0, tonumber(seq), 'pricing')
  end
  local worst = math.floor(worst_images * price)
  local committed = tonumber(control[3] or 0) + reserved + tonumber(control[5] or 0)
  if committed + worst > tonumber(control[2]) then
    redis.call('HSET', batch_key, 'state', B_BUDGET)
    return answer(0, tonumber(seq), B_BUDGET)
  end
  redis.call('HINCRBY', batch_key, 'reserved_micros', worst)
  redis.call('HSET', job_key, 'reserved_micros', worst)
end
if not holds_slot then
  slot_take(job_id, batch_key, now)
end
local new_seq = tonumber(seq) + 1
redis.call('HSET', job_key, 'state', S_CREATING, 'seq', new_seq, 'claimed_at', now, 'hold', '',
  'worst_images', worst_images, 'worst_micros', math.floor(worst_images * price))
redis.call('HINCRBY', job_key, 'attempts', 1)
if state ~= S_CREATING then
  redis.call('HINCRBY', batch_key, 'n:' .. state, -1)
  redis.call('HINCRBY', batch_key, 'n:' .. S_CREATING, 1)
end
redis.call('ZREM', queued_key, job_id)
redis.call('ZADD', due_key, now + window, job_id)
return answer(1, new_seq, state)
