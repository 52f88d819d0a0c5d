-- Cluster-wide pace for creations (GCRA). Reserves the caller a slot and says how long to wait
-- for it; a wait longer than the horizon reserves nothing (the caller comes back later).
-- KEYS[1] pace key (theoretical arrival time, seconds)
-- ARGV[1] now   ARGV[2] interval between creations (1 / rate)   ARGV[3] horizon (max wait)
-- Returns the wait in seconds as a string; '0' means go now.
local now = tonumber(ARGV[1])
local interval = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then
  tat = now
end
local wait = tat - now
if wait > tonumber(ARGV[3]) then
  return tostring(wait)
end
redis.call('SET', KEYS[1], tostring(tat + interval), 'EX', math.ceil(wait + interval + 60))
return tostring(wait)
