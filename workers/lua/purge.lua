#!lua flags=allow-oom
-- Purge a slice of one batch's jobs, from the head of its job list: each job's remaining image
-- references are released (an image goes with its last reference), its record and payload
-- deleted, and it leaves every cluster set. One call handles ARGV[1] jobs, so Redis is never
-- held long; the list shrinks with each call, so a purge cut short resumes where it stopped.
-- It only frees memory, so it runs even when Redis is full.
-- KEYS[1] the batch's job list   KEYS[2] due zset   KEYS[3] queued zset   KEYS[4] held zset
-- KEYS[5] in-flight zset   KEYS[6] the batch's ready zset (waiting for a slot)
-- KEYS[7] deliveries zset   KEYS[8] abandoned zset (remote tasks followed for their cost)
-- KEYS[9] the poll pump's zset
-- ARGV[1] jobs per call   ARGV[2] job key prefix   ARGV[3] payload key prefix
-- Returns how many jobs remain in the list.
local batch_jobs, count, job_prefix, payload_prefix = KEYS[1], tonumber(ARGV[1]), ARGV[2], ARGV[3]
local ids = redis.call('LRANGE', batch_jobs, 0, count - 1)
for _, id in ipairs(ids) do
  local job = job_prefix .. id
  job_images_release(job)
  redis.call('DEL', job, payload_prefix .. id)
  for k = 2, #KEYS do
    redis.call('ZREM', KEYS[k], id)
  end
end
if #ids > 0 then
  redis.call('LTRIM', batch_jobs, #ids, -1)
end
return redis.call('LLEN', batch_jobs)
