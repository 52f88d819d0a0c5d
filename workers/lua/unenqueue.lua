#!lua flags=allow-oom
-- Take back jobs one submission wrote to a batch that existed before it, once Redis refused a
-- write (OOM): each job still queued and untouched (seq 0) goes with its payload and image
-- references, and leaves the batch list, the queued set and the batch counters. The caller
-- passes the jobs last-written first, so each is found at the list's tail (LREM from the
-- tail stops there). It only frees memory, so it runs even when Redis is full.
-- KEYS[1] batch hash   KEYS[2] batch job list   KEYS[3] queued zset   KEYS[4] due zset
-- KEYS[5] in-flight zset (a job admitted at enqueue holds a slot)   KEYS[6] batch's ready zset
-- ARGV[1] job key prefix   ARGV[2] payload key prefix   ARGV[3..] job IDs
-- Returns how many jobs it took back.
local batch, batch_jobs, queued = KEYS[1], KEYS[2], KEYS[3]
local job_prefix, payload_prefix = ARGV[1], ARGV[2]
local taken = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  local job = job_prefix .. id
  local cur = redis.call('HMGET', job, 'state', 'seq')
  if cur[1] == S_QUEUED and cur[2] == '0' then
    job_images_release(job)
    redis.call('DEL', job, payload_prefix .. id)
    redis.call('ZREM', queued, id)
    redis.call('ZREM', KEYS[4], id)
    redis.call('ZREM', KEYS[6], id)
    if redis.call('ZREM', KEYS[5], id) == 1 then
      redis.call('HINCRBY', batch, 'inflight', -1)
    end
    redis.call('LREM', batch_jobs, -1, id)
    taken = taken + 1
  end
end
if taken > 0 then
  redis.call('HINCRBY', batch, 'total', -taken)
  redis.call('HINCRBY', batch, 'n:queued', -taken)
end
return taken
