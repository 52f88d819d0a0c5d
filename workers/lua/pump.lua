-- The polls due by ARGV[1], for the poll pump (workers.pump) to send: up to ARGV[2] jobs of
-- the pump's set with what a poll's message carries of each (workers.jobs.Followed), read
-- here in one round trip instead of by each poll. Entries of jobs that stopped running (ended,
-- purged, parked) are dropped. Nothing else is removed: the pump's hand-off does that with
-- the push of the message (hand_off.lua), so a pump that dies in between loses no poll.
-- KEYS[1] the pump's zset (job_id -> when its poll is due)
-- ARGV[1] due by (seconds since the epoch)   ARGV[2] most entries   ARGV[3] job key prefix
-- Returns the entries, each {job_id, score, seq, created_at, polls, poll_errors, first_poll_at,
-- remote_task_id}.
local polls_key, due_by, most, job_prefix = KEYS[1], ARGV[1], tonumber(ARGV[2]), ARGV[3]

local found = redis.call('ZRANGEBYSCORE', polls_key, '-inf', due_by, 'WITHSCORES', 'LIMIT', 0, most)
local entries = {}
for i = 1, #found, 2 do
  local job_id, score = found[i], found[i + 1]
  local job = redis.call('HMGET', job_prefix .. job_id, 'state', 'seq', 'created_at', 'polls',
    'poll_errors', 'first_poll_at', 'remote_task_id')
  if job[1] == S_RUNNING and job[7] then
    entries[#entries + 1] = {job_id, score, job[2], job[3] or '0', job[4] or '0', job[5] or '0',
      job[6] or '', job[7]}
  else
    redis.call('ZREM', polls_key, job_id)
  end
end
return entries
