-- Cluster-wide pace (GCRA). Reserves the caller a slot and says how long to wait for it;
-- a wait longer than the horizon reserves nothing (the caller comes back later). The rate is
-- the configured one, or lower while 429s have tightened it (see workers/pacing.py).
-- KEYS[1] pace key (theoretical arrival time, seconds)   KEYS[2] tightened rate ('' if none)
-- ARGV[1] now   ARGV[2] configured rate per second (0 = none)   ARGV[3] horizon (max wait)
-- Returns the wait in seconds as a string; '0' means go now.
local pace_key, tightened_key = KEYS[1], KEYS[2]
local now, rate, horizon = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])

local tightened = tonumber(redis.call('GET', tightened_key) or 0)
if tightened > 0 and (rate <= 0 or tightened < rate) then
  rate = tightened
end
if rate <= 0 then
  return '0'
end
local interval = 1 / rate
local tat = tonumber(redis.call('GET', pace_key) or now)
if tat < now then
  tat = now
end
local wait = tat - now
if wait > horizon then
  return tostring(wait)
end
redis.call('SET', pace_key, tostring(tat + interval), 'EX', math.ceil(wait + interval + 60))
return tostring(wait)
