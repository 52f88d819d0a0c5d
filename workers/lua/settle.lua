-- What the sweeper learned about an abandoned remote task (workers/abandoned.py), in one step:
-- a sweeper killed half-way leaves it whole, and a repeat finds the job gone from the set and
-- does nothing. The job's terminal state, record and stream entry are never touched.
-- KEYS[1] job hash   KEYS[2] batch hash
-- ARGV[1] job_id   ARGV[2] the remote task the sweeper asked about   ARGV[3] outcome:
--   'ended'    the task ended: its cost (ARGV[4], micro-USD) is counted, its estimate leaves
--              the batch's unseen money, the job keeps 'abandoned_cost_micros'
--   'running'  not ended yet: asked again at ARGV[5]
--   'give_up'  past the deadline or unknown to the provider: its estimate stays unseen
-- ARGV[4] cost in micro-USD   ARGV[5] when to ask next   ARGV[6] now
-- Returns 'settled', 'running', 'given_up', 'stale' (the job was re-opened, purged or follows
-- another task: dropped from the set) or 'absent' (not followed: nothing done).
local job_key, batch_key = KEYS[1], KEYS[2]
local job_id, task, outcome = ARGV[1], ARGV[2], ARGV[3]
local cost, next_at, now = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])

-- Arguments are checked before the first write: a bad one must not leave half a step done.
local function bounded(x)  -- a finite time: NaN and inf fail (tonumber takes 'nan', 'inf')
  return x and x == x and x >= 0 and x < 1e11
end
if not cost or not (cost >= 0 and cost <= 1e12) or cost ~= math.floor(cost)
    or not bounded(next_at) or not bounded(now)
    or not (outcome == 'ended' or outcome == 'running' or outcome == 'give_up') then
  return redis.error_reply('settle: outcome, cost and times must be known words and bounded numbers')
end
if not redis.call('ZSCORE', K_ABANDONED, job_id) then
  return 'absent'
end
local cur = redis.call('HMGET', job_key, 'state', 'remote_task_id', 'abandoned_task')
if not cur[1] then  -- the job is gone: its batch's counters went with it
  redis.call('ZREM', K_ABANDONED, job_id)
  return 'stale'
end
if not (cur[1] == S_FAILED or cur[1] == S_CANCELLED) or cur[3] ~= task or cur[2] ~= task then
  abandoned_drop(job_id, job_key, batch_key, false)
  return 'stale'
end
if outcome == 'running' then
  redis.call('ZADD', K_ABANDONED, 'XX', next_at, job_id)
  redis.call('HINCRBY', job_key, 'abandoned_looks', 1)
  return 'running'
end
if outcome == 'give_up' then
  redis.call('ZREM', K_ABANDONED, job_id)
  redis.call('HINCRBY', batch_key, 'abandoned', -1)
  redis.call('HSET', job_key, 'abandoned_given_up_at', now)
  redis.call('HINCRBY', K_STATS, 'abandoned_given_up', 1)
  return 'given_up'
end
abandoned_drop(job_id, job_key, batch_key, true)
if cost > 0 then
  redis.call('HINCRBY', batch_key, 'cost_micros', cost)
end
redis.call('HSET', job_key, 'abandoned_cost_micros', cost, 'abandoned_settled_at', now)
redis.call('HINCRBY', K_STATS, 'abandoned_settled', 1)
return 'settled'
