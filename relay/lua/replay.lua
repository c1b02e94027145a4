-- Move a dead letter back into its conversation's mailbox, keeping its id.
-- KEYS: dead, body, mailbox, ready   ARGV: dead_entry, id, envelope, conversation
-- Returns 1 when replayed, 0 when the entry is gone (already replayed or dropped).
if redis.call('XDEL', KEYS[1], ARGV[1]) == 0 then
  return 0
end
append(KEYS[2], KEYS[3], KEYS[4], ARGV[2], ARGV[3], ARGV[4])
return 1
