-- Learn the price the provider charges a batch per image: never lowered, so reservations are
-- priced at the most that was seen (claim.lua reads it).
-- KEYS[1] batch hash   ARGV[1] micro-USD per image seen in one job's usage
-- Returns the batch's price now.
local batch_key, seen = KEYS[1], tonumber(ARGV[1])
if not seen or seen < 0 or seen > 1e12 then
  return redis.error_reply('price: a non-negative number of micro-USD is expected')
end
local known = tonumber(redis.call('HGET', batch_key, 'price_micros') or -1)
if seen > known then
  redis.call('HSET', batch_key, 'price_micros', math.floor(seen))
  return math.floor(seen)
end
return known
