-- Done with a conversation's head message: delivered, or (with the dead-letter arguments)
-- moved to the dead-letter stream, counted by its code and as a failure of its destination.
-- Nothing happens if this consumer lost the token.
-- KEYS: ready, mailbox, body, dead, dead_codes, failures
-- ARGV: group, consumer, token, id, conversation [, reason, code, at_ms, envelope, destination, failures_ttl_ms]
-- Returns 1 when done, 0 when the token is no longer ours.
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then
  return 0
end
if redis.call('LINDEX', KEYS[2], 0) == ARGV[4] then
  if #ARGV > 5 then
    redis.call('XADD', KEYS[4], '*', 'id', ARGV[4], 'reason', ARGV[6], 'code', ARGV[7],
               'at', ARGV[8], 'envelope', ARGV[9])
    redis.call('HINCRBY', KEYS[5], ARGV[7], 1)
    count_failure(KEYS[6], ARGV[10], ARGV[11])
  end
  redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[3], ARGV[4])
end
release(KEYS[1], ARGV[1], ARGV[3], KEYS[2], ARGV[5])
return 1
