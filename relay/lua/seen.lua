-- Which of these ids did this partition accept within the dedup window?
-- KEYS: seen_i (one partition)
-- Returns per id: 1 accepted (the marker is written again, so a WAIT after this call covers the
-- first write), 0 not.
local out = {}
for i = 1, #KEYS do
  if redis.call('SET', KEYS[i], '1', 'XX', 'KEEPTTL') then out[i] = 1 else out[i] = 0 end
end
return out
