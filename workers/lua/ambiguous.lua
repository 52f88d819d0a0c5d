-- A create whose outcome is unknown (no answer, a 5xx, an answer without an ID) may have made
-- a remote task: counted on the cluster, the job and its batch, its worst case priced into the
-- batch's unseen money at the higher of the configured unit price and the batch's learned
-- price (read here, in the same step: a price learned meanwhile is not missed).
-- KEYS[1] job hash   KEYS[2] batch hash
-- ARGV[1] the job's worst-case image count   ARGV[2] configured unit price, micro-USD per image
-- Returns the micro-USD added to the batch's unseen money (0 for a job purged meanwhile: only
-- the cluster counts it).
local job_key, batch_key = KEYS[1], KEYS[2]
local images, unit = tonumber(ARGV[1]), tonumber(ARGV[2])
if not images or images < 0 or images > 1e6 or not unit or unit < 0 or unit > 1e12 then
  return redis.error_reply('ambiguous: images and price must be bounded non-negative numbers')
end
if redis.call('EXISTS', job_key) == 0 then  -- purged meanwhile: its batch's counters went too
  redis.call('HINCRBY', K_STATS, 'create_ambiguous', 1)
  return 0
end
local unseen = math.floor(images * batch_price(batch_key, unit))
count_possible_duplicate(job_key, batch_key, 'create_ambiguous', unseen)
return unseen
