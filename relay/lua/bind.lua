-- Bind message ids to the partition their conversation is queued in, for the dedup window, so
-- one delivery identity is accepted once whatever route (and so partition) a re-send resolves
-- to. The identity keys of one call share one partition's hash tag (the id's own partition).
-- KEYS: identity_i
-- ARGV: now_ms, window_ms, then per id: partition_i (where its conversation is queued)
-- Returns per id: "" when bound to that partition (just now, or before), else the binding
-- found ("<partition>:<bound at ms>") for the caller to settle.
local out = {}
for i = 1, #KEYS do
  local bound = redis.call('GET', KEYS[i])
  if not bound then
    redis.call('SET', KEYS[i], ARGV[2 + i] .. ':' .. ARGV[1], 'PX', ARGV[2])
    out[i] = ''
  elseif string.match(bound, '^(%d+):') == ARGV[2 + i] then
    -- Written again so that a WAIT after this call covers the first write too.
    redis.call('SET', KEYS[i], bound, 'KEEPTTL')
    out[i] = ''
  else
    out[i] = bound
  end
end
return out
