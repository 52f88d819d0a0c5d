-- Give free in-flight slots to waiting jobs, fairly between batches (lib/slots.lua).
-- No KEYS: the library reaches the in-flight set, the ready sets and the batches by name.
-- ARGV[1] in-flight cap (0 = none)   ARGV[2] now   ARGV[3] most slots to give
-- Returns the admitted jobs flat: job_id, seq, ... (send each a create).
local cap, now, limit = effective_cap(ARGV[1]), ARGV[2], tonumber(ARGV[3])
return admit(cap, now, limit)
