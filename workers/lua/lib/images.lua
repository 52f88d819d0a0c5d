-- Image references (workers/images.py): a job holds one per use of an image, a submission one
-- pin per image; an image goes with its last reference. Shared by finish, purge, purge_batch,
-- unenqueue and unpin.

local function image_release(image_key)
  if redis.call('HINCRBY', image_key, 'refs', -1) <= 0 then
    redis.call('DEL', image_key)
  end
end

-- The references a job holds (its 'images' field: image keys, one per use).
local function job_images_release(job_key)
  local held = redis.call('HGET', job_key, 'images')
  if held then
    for image in string.gmatch(held, '[^,]+') do
      image_release(image)
    end
    redis.call('HDEL', job_key, 'images')
  end
end
