#!lua flags=allow-oom
-- The last step of a purge, once purge.lua has emptied the batch's job list: the batch's own
-- keys go (record, codes, parked set, submission pins), and it leaves the batch listings.
-- KEYS[1] batch hash   KEYS[2] batch codes hash   KEYS[3] the batch's parked zset
-- KEYS[4] the batch's job list   KEYS[5] the batch's pinned image set   KEYS[6] batches zset
-- KEYS[7] ended batches zset   KEYS[8] deliveries zset   KEYS[9] batches with ready jobs
-- KEYS[10] the batch's ready zset
-- ARGV[1] batch_id   ARGV[2] image key prefix
-- Returns 1 when the batch is gone, 0 when jobs remain (purge.lua first).
local batch, codes, parked, batch_jobs, pins = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local batch_id, image_prefix = ARGV[1], ARGV[2]
if redis.call('LLEN', batch_jobs) > 0 then
  return 0
end
for _, sha in ipairs(redis.call('SMEMBERS', pins)) do
  image_release(image_prefix .. sha)
end
redis.call('DEL', batch, codes, parked, pins, KEYS[10])
redis.call('ZREM', KEYS[9], batch_id)
redis.call('ZREM', KEYS[6], batch_id)
redis.call('ZREM', KEYS[7], batch_id)
redis.call('ZREM', KEYS[8], 'batch:' .. batch_id)
return 1
