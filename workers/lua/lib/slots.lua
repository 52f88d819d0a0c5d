-- Slots of the in-flight cap and admission: shared by claim, park, finish, enqueue and admit.
-- (Prepended to those scripts by workers/store.py, after the K_, S_, B_, H_ constants.)
--
-- A job holds a slot while it is in the in-flight zset; its batch counts its slots in the
-- batch hash field 'inflight'. The two change together, and only when the zset really
-- changed (ZADD NX / ZREM answer 1), so they agree whatever is repeated.
--
-- Jobs that may not start yet wait in their batch's ready zset (scored in file order) with no
-- Celery message; batches with ready jobs are in K_READY. ``admit`` gives free slots to the
-- active batch furthest below its weighted share (in-flight / weight; the batch served
-- longest ago on a tie, so equal batches take turns), within the batch's own max_in_flight.

-- The cap the caller was configured with, or else the one the workers published: a producer
-- that was not told the cap still enqueues as the workers will run.
local function effective_cap(configured)
  local cap = tonumber(configured) or 0
  if cap > 0 then
    return cap
  end
  return tonumber(redis.call('HGET', K_CLUSTER, 'max_in_flight') or 0) or 0
end

local function slot_take(job_id, batch_key, now)
  if redis.call('ZADD', K_INFLIGHT, 'NX', now, job_id) == 1 then
    redis.call('HINCRBY', batch_key, 'inflight', 1)
  end
end

local function slot_free(job_id, batch_key)
  if redis.call('ZREM', K_INFLIGHT, job_id) == 1 then
    redis.call('HINCRBY', batch_key, 'inflight', -1)
  end
end

local function ready_key(batch_id)
  return K_BATCH_PREFIX .. batch_id .. ':ready'
end

-- ``order``: the job's line in its file, so a batch's jobs start in file order.
local function wait_for_slot(job_id, batch_id, order)
  redis.call('ZADD', ready_key(batch_id), 'NX', order, job_id)
  redis.call('ZADD', K_READY, 'NX', 0, batch_id)
end

local function batch_full(batch_key, cap)
  local limit = tonumber(redis.call('HGET', batch_key, 'max_in_flight') or 0)
  if limit > 0 and tonumber(redis.call('HGET', batch_key, 'inflight') or 0) >= limit then
    return true
  end
  return cap > 0 and redis.call('ZCARD', K_INFLIGHT) >= cap
end

local function next_batch()
  local best, best_load, best_turn = nil, 0, 0
  for _, batch_id in ipairs(redis.call('ZRANGE', K_READY, 0, -1)) do
    local b = redis.call('HMGET', K_BATCH_PREFIX .. batch_id,
      'state', 'inflight', 'weight', 'max_in_flight', 'turn')
    if (b[1] or B_ACTIVE) == B_ACTIVE then
      local inflight, limit = tonumber(b[2] or 0), tonumber(b[4] or 0)
      if limit <= 0 or inflight < limit then
        local load = inflight / math.max(tonumber(b[3] or 1) or 1, 0.01)
        local turn = tonumber(b[5] or 0)
        if best == nil or load < best_load or (load == best_load and turn < best_turn) then
          best, best_load, best_turn = batch_id, load, turn
        end
      end
    end
  end
  return best
end

-- Give up to ``limit`` free slots to waiting jobs; returns them flat: job_id, seq, ...
-- Each admitted job is put in the due set, so a create message lost after this is swept.
local function admit(cap, now, limit)
  local admitted = {}
  local tries = 4 * limit + 64
  while #admitted < 2 * limit and tries > 0 do
    tries = tries - 1
    if cap > 0 and redis.call('ZCARD', K_INFLIGHT) >= cap then
      break
    end
    local batch_id = next_batch()
    if not batch_id then
      break
    end
    local popped = redis.call('ZPOPMIN', ready_key(batch_id))
    if #popped > 0 then
      local job_id = popped[1]
      local job_key = K_JOB_PREFIX .. job_id
      local cur = redis.call('HMGET', job_key, 'state', 'hold', 'seq')
      if cur[1] == S_QUEUED or (cur[1] == S_WAITING and cur[2] == H_SLOT) then
        local batch_key = K_BATCH_PREFIX .. batch_id
        slot_take(job_id, batch_key, now)
        redis.call('HSET', job_key, 'hold', '')
        redis.call('HINCRBY', batch_key, 'admitted', 1)
        redis.call('HSET', batch_key, 'turn', redis.call('INCR', K_ADMIT_TURN))
        redis.call('ZADD', K_DUE, now, job_id)
        admitted[#admitted + 1] = job_id
        admitted[#admitted + 1] = tonumber(cur[3])
      end
    end
    if redis.call('EXISTS', ready_key(batch_id)) == 0 then
      redis.call('ZREM', K_READY, batch_id)
    end
  end
  return admitted
end
