-- Accept messages for conversations of one partition, each unless its id was accepted within
-- the dedup window. One call takes a whole batch (concurrent requests, and every message of one
-- request), atomically and in order.
-- KEYS: body, ready, then per message: seen_i, mailbox_i
-- ARGV: dedup_ms, then per message: id_i, envelope_i, conversation_i
-- Returns a list: 1 for each message queued, 0 for each duplicate.
local out = {}
for i = 1, (#KEYS - 2) / 2 do
  if redis.call('SET', KEYS[1 + 2 * i], '1', 'NX', 'PX', ARGV[1]) then
    append(KEYS[1], KEYS[2 + 2 * i], KEYS[2], ARGV[3 * i - 1], ARGV[3 * i], ARGV[3 * i + 1])
    out[i] = 1
  else
    redis.call('SET', KEYS[1 + 2 * i], '1', 'XX', 'KEEPTTL')  -- so a WAIT after this covers the first write
    out[i] = 0
  end
end
return out
