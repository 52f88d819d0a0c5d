-- The task message the caller runs, acknowledged by the script that does its step: kombu's
-- unacked record (its index zset and hash, K_UNACKED_INDEX and K_UNACKED) goes in the same
-- atomic step, one round trip fewer per task than kombu's own ack (workers.transport).
-- Called only where the script answers: a script refused mid-way (a full Redis) acks nothing.
local function ack_message(tag)
  if tag ~= '' then
    redis.call('ZREM', K_UNACKED_INDEX, tag)
    redis.call('HDEL', K_UNACKED, tag)
  end
end
