-- Put a misplaced job back where something moves it on (the sweeper's repair pass). The
-- caller's reading may be stale by now, so every condition is checked again here, atomically:
-- a job that moved on meanwhile is left alone.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] the set its hold names (held, the batch's ready or parked set; '' if none)
-- ARGV[1] job_id   ARGV[2] now
-- Returns what it fixed: 'untracked_in_flight', 'not_due', 'not_parked', or '' for nothing.
local job_key, batch_key, due_key, queued_key, parked_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local job_id, now = ARGV[1], ARGV[2]

local cur = redis.call('HMGET', job_key, 'state', 'hold', 'batch', 'line')
local state, hold, batch_id = cur[1], cur[2] or '', cur[3]
local due = redis.call('ZSCORE', due_key, job_id)
if state == S_CREATING or state == S_RUNNING then
  if not redis.call('ZSCORE', K_INFLIGHT, job_id) then
    slot_take(job_id, batch_key, now)  -- a remote task exists or may: it holds a slot
    return 'untracked_in_flight'
  end
  if not due then
    redis.call('ZADD', due_key, now, job_id)
    return 'not_due'
  end
elseif state == S_QUEUED then
  if not due and not redis.call('ZSCORE', queued_key, job_id)
      and not redis.call('ZSCORE', ready_key(batch_id), job_id) then
    redis.call('ZADD', due_key, now, job_id)
    return 'not_due'
  end
elseif state == S_WAITING then
  if hold == '' then
    if not due then
      redis.call('ZADD', due_key, now, job_id)
      return 'not_due'
    end
  elseif hold == H_SLOT then
    if not redis.call('ZSCORE', ready_key(batch_id), job_id) then
      wait_for_slot(job_id, batch_id, tonumber(cur[4] or 0) or 0)
      return 'not_parked'
    end
  elseif parked_key ~= '' and not redis.call('ZSCORE', parked_key, job_id) then
    redis.call('ZADD', parked_key, 'NX', now, job_id)
    return 'not_parked'
  end
end
return ''
