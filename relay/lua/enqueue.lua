-- Accept a message unless its id was already accepted within the dedup window.
-- KEYS: seen, body, mailbox, ready   ARGV: id, envelope, dedup_ms, conversation
-- Returns 1 when queued, 0 for a duplicate.
if not redis.call('SET', KEYS[1], '1', 'NX', 'PX', ARGV[3]) then
  return 0
end
append(KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], ARGV[4])
return 1
