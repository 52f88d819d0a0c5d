-- Move a job one step, only if it is still where the caller saw it (compare-and-set on seq).
-- Every task message carries the seq it expects, so duplicates and redeliveries fall out here.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- ARGV[1] job_id   ARGV[2] expected seq   ARGV[3] allowed current states, comma-separated
-- ARGV[4] new state   ARGV[5] seq increment (0 or 1)
-- ARGV[6] when the next step is due ('' removes the job from the due set)
-- ARGV[7] fields to increment by 1, comma-separated ('' for none)
-- ARGV[8..] field, value pairs to set
-- Returns {1, new seq, previous state} on success, {0, current seq, current state} otherwise.
local cur = redis.call('HMGET', KEYS[1], 'state', 'seq')
local state, seq = cur[1], cur[2]
if not state then
  return {0, -1, ''}
end
if seq ~= ARGV[2] or not string.find(',' .. ARGV[3] .. ',', ',' .. state .. ',', 1, true) then
  return {0, tonumber(seq), state}
end
local new_seq = tonumber(seq) + tonumber(ARGV[5])
redis.call('HSET', KEYS[1], 'state', ARGV[4], 'seq', new_seq)
for field in string.gmatch(ARGV[7], '[^,]+') do
  redis.call('HINCRBY', KEYS[1], field, 1)
end
for i = 8, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
if state ~= ARGV[4] then
  redis.call('HINCRBY', KEYS[2], 'n:' .. state, -1)
  redis.call('HINCRBY', KEYS[2], 'n:' .. ARGV[4], 1)
end
if state == 'queued' then
  redis.call('ZREM', KEYS[4], ARGV[1])
end
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
end
return {1, new_seq, state}
