-- Hand polls the pump found due to the workers: remove each job from the pump's set if its
-- entry is still the one the pump read (a step since then scheduled a newer poll, which stays),
-- and push the message that polls them, in one step: no poll is lost or left behind.
-- KEYS[1] the pump's zset   KEYS[2] the poll queue (list)
-- ARGV[1] the message ('' for none: the caller sends it)
-- ARGV[2..] job_id, score pairs as pump.lua returned them
-- Returns how many entries were still current.
local polls_key, queue, message = KEYS[1], KEYS[2], ARGV[1]
local current = 0
for i = 2, #ARGV, 2 do
  if redis.call('ZSCORE', polls_key, ARGV[i]) == ARGV[i + 1] then
    redis.call('ZREM', polls_key, ARGV[i])
    current = current + 1
  end
end
if current > 0 and message ~= '' then  -- none current: another pump handed them off
  redis.call('LPUSH', queue, message)
end
return current
