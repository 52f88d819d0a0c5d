-- Enqueue jobs of one batch unless they exist: jobs are keyed by (batch, custom_id), so
-- resubmission adds nothing.
-- KEYS[1] batch hash   KEYS[2] batch job list   KEYS[3] queued zset
-- KEYS[2 + 2i] job hash and KEYS[3 + 2i] payload string of the i-th job (i = 1..n)
-- ARGV[1] batch_id   ARGV[2] now
-- ARGV[4i - 1 .. 4i + 2] the i-th job: job_id, custom_id, request JSON, line in the batch file
-- ARGV[2 + 4n + i] (optional) the image keys the i-th job references, comma-separated, one per
-- use (n = number of jobs)
-- Returns one flag per job: 1 when enqueued, 0 when it already existed. The new jobs join
-- the batch list and the queued zset in order, and the batch counters once.
local created, ids, scored = {}, {}, {}
-- Shared images (issue 12): each new job takes one reference on every image it uses, in this
-- same step. The submission pinned them first (pin.lua); one found missing stops the script
-- before anything is written.
local jobs_n = (#KEYS - 3) / 2
local function images_of(i)
  return ARGV[2 + 4 * jobs_n + i] or ''
end
for i = 1, jobs_n do
  for image in string.gmatch(images_of(i), '[^,]+') do
    if redis.call('EXISTS', image) == 0 then
      return redis.error_reply('WQ107 image not stored: ' .. image)
    end
  end
end
local function take_images(i, job)
  if images_of(i) ~= '' then
    redis.call('HSET', job, 'images', images_of(i))
    for image in string.gmatch(images_of(i), '[^,]+') do
      redis.call('HINCRBY', image, 'refs', 1)
    end
  end
end
for i = 1, (#KEYS - 3) / 2 do
  local job, a = KEYS[2 + 2 * i], 4 * i - 1
  if redis.call('EXISTS', job) == 1 then
    created[i] = 0
  else
    redis.call('HSET', job, 'batch', ARGV[1], 'custom_id', ARGV[a + 1], 'state', 'queued',
      'seq', 0, 'attempts', 0, 'polls', 0, 'submitted_at', ARGV[2], 'line', ARGV[a + 3])
    redis.call('SET', KEYS[3 + 2 * i], ARGV[a + 2])
    take_images(i, job)
    created[i] = 1
    ids[#ids + 1] = ARGV[a]
    scored[#scored + 1] = ARGV[2]
    scored[#scored + 1] = ARGV[a]
  end
end
if #ids > 0 then
  redis.call('RPUSH', KEYS[2], unpack(ids))
  redis.call('ZADD', KEYS[3], unpack(scored))
  redis.call('HINCRBY', KEYS[1], 'total', #ids)
  redis.call('HINCRBY', KEYS[1], 'n:queued', #ids)
end
return created
