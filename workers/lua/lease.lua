-- Take or keep a lease: the holder renews it, anyone takes it once it has expired.
-- KEYS[1] lease key   ARGV[1] candidate holder   ARGV[2] time to live in milliseconds
-- Returns 1 when the candidate holds the lease now.
local holder = redis.call('GET', KEYS[1])
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
