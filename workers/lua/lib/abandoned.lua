-- Abandoned remote tasks (workers/abandoned.py): a job ended while its remote task may run on
-- and be billed (status checks ran out, answers unreadable, a cancel while it ran). Its job
-- id waits in K_ABANDONED (scored: when the sweeper asks next), its worst case is counted as
-- the batch's 'unseen_micros' (and kept on the job as 'abandoned_unseen_micros'), and the
-- batch's 'abandoned' counts the tasks followed now. Shared by finish, settle and reopen.

-- Follow the job's remote task ``task`` for its cost, unless that task's cost is already
-- known (a reopened job that followed it again and was abandoned again).
local function abandoned_add(job_id, job_key, batch_key, task, now, estimate)
  local known = redis.call('HMGET', job_key, 'abandoned_task', 'abandoned_cost_micros')
  if known[1] == task and known[2] then
    return 0
  end
  if redis.call('ZADD', K_ABANDONED, 'NX', now, job_id) == 0 then
    return 0
  end
  redis.call('HINCRBY', batch_key, 'abandoned', 1)
  redis.call('HINCRBY', batch_key, 'unseen_micros', estimate)
  redis.call('HSET', job_key, 'abandoned_task', task, 'abandoned_at', now, 'abandoned_looks', 0,
    'abandoned_unseen_micros', estimate)
  redis.call('HDEL', job_key, 'abandoned_cost_micros', 'abandoned_given_up_at')
  redis.call('HINCRBY', K_STATS, 'abandoned', 1)
  return 1
end

-- Stop following the job's abandoned task. ``take_back``: its estimate leaves the batch's
-- unseen money (its real cost will be counted another way); otherwise the estimate stays
-- unseen for good and the job no longer refers to it. Returns 1 if it was being followed.
local function abandoned_drop(job_id, job_key, batch_key, take_back)
  local followed = redis.call('ZREM', K_ABANDONED, job_id)
  if followed == 1 then
    redis.call('HINCRBY', batch_key, 'abandoned', -1)
  end
  local unseen = tonumber(redis.call('HGET', job_key, 'abandoned_unseen_micros') or 0) or 0
  if unseen > 0 then
    if take_back then
      redis.call('HINCRBY', batch_key, 'unseen_micros', -unseen)
    end
    redis.call('HSET', job_key, 'abandoned_unseen_micros', 0)
  end
  return followed
end
