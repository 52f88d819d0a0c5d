-- Take or keep a lease: the holder renews it, anyone takes it once it has expired.
-- KEYS[1] lease key   ARGV[1] candidate holder   ARGV[2] time to live in milliseconds
-- Returns 1 when the candidate holds the lease now.
local lease_key, candidate, ttl_ms = KEYS[1], ARGV[1], ARGV[2]

local holder = redis.call('GET', lease_key)
if holder == false or holder == candidate then
  redis.call('SET', lease_key, candidate, 'PX', ttl_ms)
  return 1
end
return 0
