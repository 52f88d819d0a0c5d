-- Enqueue jobs of one batch unless they exist: jobs are keyed by (batch, custom_id), so
-- resubmission adds nothing. With an in-flight cap (or a batch max_in_flight), new jobs wait
-- in the batch's ready set and only those given a slot now are returned to be sent a create
-- message (lib/slots.lua); without one, every new job is queued and returned.
-- KEYS[1] batch hash   KEYS[2] batch job list   KEYS[3] queued zset
-- KEYS[2 + 2i] job hash and KEYS[3 + 2i] payload string of the i-th job (i = 1..n)
-- ARGV[1] batch_id   ARGV[2] now   ARGV[3] in-flight cap (0 = none)
-- ARGV[4i .. 4i + 3] the i-th job: job_id, custom_id, request JSON, line in the batch file
-- ARGV[3 + 4n + i] (optional) the image keys the i-th job references, comma-separated, one per
-- use (n = number of jobs)   ARGV[3 + 5n + i] (optional) the i-th job's worst-case image count
-- (workers.pricing), for its claim to reserve without reading the request (claim.lua)
-- Returns {flags, admitted}: one flag per job (1 enqueued, 0 already there), and the jobs to
-- send creates for, flat: job_id, seq, job_id, seq, ...
local batch_key, list_key, queued_key = KEYS[1], KEYS[2], KEYS[3]
local batch_id, now, cap = ARGV[1], ARGV[2], effective_cap(ARGV[3])
local FIRST_JOB_KEY, FIRST_JOB_ARG = 4, 4
local jobs_n = (#KEYS - 3) / 2

-- Shared images: each new job takes one reference on every image it uses, in this same
-- step. The submission pinned them first (pin.lua); one found missing stops the script
-- before anything is written.
local function images_of(i)
  return ARGV[3 + 4 * jobs_n + i] or ''
end
for i = 1, jobs_n do
  for image in string.gmatch(images_of(i), '[^,]+') do
    if redis.call('EXISTS', image) == 0 then
      return redis.error_reply('WQ110 image not stored: ' .. image)
    end
  end
end
local function worst_of(i)
  return ARGV[3 + 5 * jobs_n + i] or ''
end
local function take_images(i, job_key)
  if images_of(i) ~= '' then
    redis.call('HSET', job_key, 'images', images_of(i))
    for image in string.gmatch(images_of(i), '[^,]+') do
      redis.call('HINCRBY', image, 'refs', 1)
    end
  end
end

local gated = cap > 0 or tonumber(redis.call('HGET', batch_key, 'max_in_flight') or 0) > 0
local created, ids, scored, admitted = {}, {}, {}, {}
for i = 1, (#KEYS - 3) / 2 do
  local job_key, payload_key = KEYS[FIRST_JOB_KEY + 2 * (i - 1)], KEYS[FIRST_JOB_KEY + 2 * (i - 1) + 1]
  local a = FIRST_JOB_ARG + 4 * (i - 1)
  local job_id, custom_id, request, line = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  if redis.call('EXISTS', job_key) == 1 then
    created[i] = 0
  else
    redis.call('HSET', job_key, 'batch', batch_id, 'custom_id', custom_id, 'state', S_QUEUED,
      'seq', 0, 'attempts', 0, 'polls', 0, 'submitted_at', now, 'line', line,
      'req_sha1', redis.sha1hex(request))
    redis.call('SET', payload_key, request)
    take_images(i, job_key)
    if worst_of(i) ~= '' then
      redis.call('HSET', job_key, 'worst_images', worst_of(i))
    end
    created[i] = 1
    ids[#ids + 1] = job_id
    if gated then
      wait_for_slot(job_id, batch_id, tonumber(line) or 0)
    else
      scored[#scored + 1] = now
      scored[#scored + 1] = job_id
      admitted[#admitted + 1] = job_id
      admitted[#admitted + 1] = 0
    end
  end
end
if #ids > 0 then
  redis.call('RPUSH', list_key, unpack(ids))
  if #scored > 0 then
    redis.call('ZADD', queued_key, unpack(scored))
  end
  redis.call('HINCRBY', batch_key, 'total', #ids)
  redis.call('HINCRBY', batch_key, 'n:' .. S_QUEUED, #ids)
end
if gated and #ids > 0 then
  admitted = admit(cap, now, #ids)
end
return {created, admitted}
