-- Release up to N parked jobs (account problem, paused batch, budget). Each one is put back
-- in the due set first, so a create message lost after this script still gets swept.
-- KEYS[1] the zset they are parked in   KEYS[2] due zset
-- ARGV[1] how many   ARGV[2] now   ARGV[3] job key prefix
-- Returns a flat list: job_id, seq, job_id, seq, ...
local parked_key, due_key = KEYS[1], KEYS[2]
local count, now, job_prefix = ARGV[1], ARGV[2], ARGV[3]

local released = {}
local items = redis.call('ZPOPMIN', parked_key, count)
for i = 1, #items, 2 do
  local id = items[i]
  local key = job_prefix .. id
  local cur = redis.call('HMGET', key, 'state', 'hold', 'seq')
  if cur[1] == S_WAITING and cur[2] and cur[2] ~= '' then
    redis.call('HSET', key, 'hold', '')
    redis.call('ZADD', due_key, now, id)
    table.insert(released, id)
    table.insert(released, cur[3])
  end
end
return released
