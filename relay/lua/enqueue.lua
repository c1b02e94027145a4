-- Accept messages for one conversation, each unless its id was already accepted within the
-- dedup window; all in one atomic step (a webhook that yields several messages never half-lands).
-- KEYS: body, mailbox, ready, seen_1 .. seen_n   ARGV: dedup_ms, conversation, id_1, envelope_1, …
-- Returns a list: 1 for each message queued, 0 for each duplicate.
local out = {}
for i = 1, #KEYS - 3 do
  if redis.call('SET', KEYS[3 + i], '1', 'NX', 'PX', ARGV[1]) then
    append(KEYS[1], KEYS[2], KEYS[3], ARGV[1 + 2 * i], ARGV[2 + 2 * i], ARGV[2])
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
