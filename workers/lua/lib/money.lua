-- Money a batch may owe without seeing it yet (possible duplicates, unpriced images): one
-- price and one way of counting it for every script.

-- The price unseen money is estimated at: the higher of the configured unit price and the
-- price the provider was seen to charge the batch (its ``price_micros`` field, ``stored`` as
-- read; price.lua raises earlier estimates when it rises).
local function price_of(unit_micros, stored)
  return math.max(unit_micros, tonumber(stored or 0) or 0)
end

-- The same, reading the batch hash (for a script that has not read it already).
local function batch_price(batch_key, unit_micros)
  return price_of(unit_micros, redis.call('HGET', batch_key, 'price_micros'))
end

-- A create that may have made a remote task nobody follows (a possible duplicate), counted
-- under ``counter`` on the cluster and the job, and on its batch with its worst case
-- ``unseen`` (micro-USD) as unseen money.
local function count_possible_duplicate(job_key, batch_key, counter, unseen)
  redis.call('HINCRBY', K_STATS, counter, 1)
  redis.call('HINCRBY', job_key, counter, 1)
  redis.call('HINCRBY', batch_key, 'duplicates_possible', 1)
  redis.call('HINCRBY', batch_key, 'unseen_micros', math.floor(unseen))
end
