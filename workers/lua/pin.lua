-- Pin one image for a batch being submitted: store its bytes unless they are there already,
-- and hold one reference for the submission, so that no job of another batch ending meanwhile
-- deletes it before this batch's jobs reference it. The pin is released by unpin.lua once the
-- batch's jobs are written, or by the batch's purge if the submitter died first.
-- KEYS[1] image hash (data, refs)   KEYS[2] the batch's set of pinned image hashes
-- ARGV[1] sha256 of the image   ARGV[2] '1' when ARGV[3] carries the raw bytes
-- ARGV[3] the raw bytes (absent unless ARGV[2] is '1')
-- Returns 1 when pinned (or pinned already), 0 when the image is not stored and no bytes came.
local image, pins, sha, has_bytes = KEYS[1], KEYS[2], ARGV[1], ARGV[2] == '1'
if redis.call('SISMEMBER', pins, sha) == 1 then
  return 1
end
if redis.call('EXISTS', image) == 0 then
  if not has_bytes then
    return 0
  end
  redis.call('HSET', image, 'data', ARGV[3], 'refs', 0)
end
redis.call('HINCRBY', image, 'refs', 1)
redis.call('SADD', pins, sha)
return 1
