#!lua flags=allow-oom
-- Release up to ARGV[2] of a batch's submission pins: each drops one reference, and an image
-- whose last reference goes is deleted with it. It only frees memory, so it runs even when
-- Redis is full (an OOM mid-submission is rolled back through here).
-- KEYS[1] the batch's set of pinned image hashes
-- ARGV[1] image key prefix   ARGV[2] pins to release per call
-- Returns how many pins remain.
local pins, prefix, count = KEYS[1], ARGV[1], tonumber(ARGV[2])
for _, sha in ipairs(redis.call('SPOP', pins, count)) do
  image_release(prefix .. sha)
end
return redis.call('SCARD', pins)
