-- Move a job one step, only if it is still where the caller saw it (compare-and-set on seq).
-- Every task message carries the seq it expects, so duplicates and redeliveries fall out here.
-- KEYS[1] job hash   KEYS[2] batch hash   KEYS[3] due zset   KEYS[4] queued zset
-- KEYS[5] a task queue (list), given with a message only
-- ARGV[1] job_id   ARGV[2] expected seq   ARGV[3] allowed current states, comma-separated
-- ARGV[4] new state   ARGV[5] seq increment (0 or 1)
-- ARGV[6] when the next step is due ('' removes the job from the due set)
-- ARGV[7] fields to increment by 1, comma-separated ('' for none)
-- ARGV[8] a task message LPUSHed on KEYS[5] if the step applies ('' for none): the job's
--         next task, rendered for the new seq, so the step never lands without it
-- ARGV[9] the delivery tag of the task message the caller runs, acknowledged here whether the
--         step applies or is stale ('' for none: the caller's task acks as kombu does)
-- ARGV[10] '1' for a poll's step (a poll that called the provider without reading the job
--         first: the script reads for it what it would have read): refused if the job's batch
--         is cancelled, then {0, seq, state, 1} and the message is not acknowledged (the
--         caller ends the job, its task acks after); an applied step's answer says whether
--         the account is blocked (a status call that went through may lift that)
-- ARGV[11] '1': the job's next poll goes to the poll pump's set (K_POLLS, at the due time)
--         instead of a message: the pump sends the polls due together, several to a message
--         (workers.pump)
-- ARGV[12..] field, value pairs to set
-- Returns {1, new seq, previous state, 0, account blocked (0 or 1)} on success,
-- {0, current seq, current state} otherwise.
local job_key, batch_key, due_key, queued_key, task_queue = KEYS[1], KEYS[2], KEYS[3], KEYS[4],
  KEYS[5]
local job_id, expected_seq, allowed, new_state = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local seq_increment, due_at, increments, message = ARGV[5], ARGV[6], ARGV[7], ARGV[8]
local delivery_tag, poll_guard, pumped = ARGV[9], ARGV[10] == '1', ARGV[11] == '1'
local FIRST_FIELD = 12

local cur = redis.call('HMGET', job_key, 'state', 'seq')
local state, seq = cur[1], cur[2]
if not state then
  ack_message(delivery_tag)
  return {0, -1, ''}
end
if seq ~= expected_seq or not string.find(',' .. allowed .. ',', ',' .. state .. ',', 1, true) then
  ack_message(delivery_tag)
  return {0, tonumber(seq), state}
end
if poll_guard and redis.call('HGET', batch_key, 'state') == B_CANCELLED then
  return {0, tonumber(seq), state, 1}
end
local new_seq = tonumber(seq) + tonumber(seq_increment)
redis.call('HSET', job_key, 'state', new_state, 'seq', new_seq)
for field in string.gmatch(increments, '[^,]+') do
  redis.call('HINCRBY', job_key, field, 1)
end
for i = FIRST_FIELD, #ARGV, 2 do
  redis.call('HSET', job_key, ARGV[i], ARGV[i + 1])
end
if state ~= new_state then
  redis.call('HINCRBY', batch_key, 'n:' .. state, -1)
  redis.call('HINCRBY', batch_key, 'n:' .. new_state, 1)
end
if state == S_QUEUED then
  redis.call('ZREM', queued_key, job_id)
end
if due_at == '' then
  redis.call('ZREM', due_key, job_id)
  redis.call('ZREM', K_POLLS, job_id)
else
  redis.call('ZADD', due_key, due_at, job_id)
  if pumped then
    redis.call('ZADD', K_POLLS, due_at, job_id)
  end
end
if message ~= '' then
  redis.call('LPUSH', task_queue, message)
end
ack_message(delivery_tag)
return {1, new_seq, state, 0, poll_guard and redis.call('EXISTS', K_ACCOUNT) or 0}
