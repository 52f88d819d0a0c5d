-- Move jobs parked by their batch's pause or budget back to waiting for an in-flight slot
-- (``wanq resume``); admission (lib/slots.lua) then starts them, fairly with other batches.
-- KEYS[1] the batch's parked zset   KEYS[2] batch hash
-- ARGV[1] batch_id   ARGV[2] most jobs to move
-- Returns how many jobs moved.
local parked_key, batch_key = KEYS[1], KEYS[2]
local batch_id, count = ARGV[1], tonumber(ARGV[2])

local moved = 0
local items = redis.call('ZPOPMIN', parked_key, count)
for i = 1, #items, 2 do
  local job_id = items[i]
  local job_key = K_JOB_PREFIX .. job_id
  local cur = redis.call('HMGET', job_key, 'state', 'hold', 'line')
  if cur[1] == S_WAITING and cur[2] and cur[2] ~= '' then
    redis.call('HSET', job_key, 'hold', H_SLOT)
    wait_for_slot(job_id, batch_id, tonumber(cur[3] or 0) or 0)
    moved = moved + 1
  end
end
return moved
