-- Learn the price the provider charges a batch per image: never lowered, so reservations are
-- priced at the most that was seen (claim.lua reads it).
-- Unseen money (possible duplicates, unpriced images, abandoned tasks) was estimated at the
-- price known then, max(configured unit price, learned price): when the price rises it is
-- scaled up with it, so no estimate stays below its images at the price known now (one taken
-- back later at its old value leaves the difference counted as unseen: the safe side).
-- KEYS[1] batch hash   ARGV[1] micro-USD per image seen in one job's usage
-- ARGV[2] the configured unit price, micro-USD per image
-- Returns the batch's price now.
local batch_key, seen, unit = KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])
if not seen or seen < 0 or seen > 1e12 or not unit or unit < 0 or unit > 1e12 then
  return redis.error_reply('price: non-negative numbers of micro-USD are expected')
end
local known = tonumber(redis.call('HGET', batch_key, 'price_micros') or -1)
if seen <= known then
  return known
end
seen = math.floor(seen)
local before = math.max(unit, known)
local unseen = tonumber(redis.call('HGET', batch_key, 'unseen_micros') or 0) or 0
if seen > before and before > 0 and unseen > 0 then
  redis.call('HSET', batch_key, 'unseen_micros', math.ceil(unseen * seen / before))
end
redis.call('HSET', batch_key, 'price_micros', seen)
return seen
