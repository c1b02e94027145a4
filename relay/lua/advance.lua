-- Done with a conversation's head message, and on to the next one under the same claim: the
-- head is dropped, and if another message waits, the token stays this consumer's (idle time
-- reset, counted as a first delivery again, so takeovers stay per message) and that message is
-- returned; a worker that dies holding it leaves the claim pending, reclaimable as any other.
-- With no message left, the token is retired.
-- Nothing happens if this consumer lost the token.
-- KEYS: ready, mailbox, body, pause
-- ARGV: group, consumer, token, id
-- Returns {0} when the token is no longer ours, {1} when the conversation is empty (token
-- retired), {1, next_id, next_envelope or '', pause_ms or ''} when it continues.
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then
  return {0}
end
if redis.call('LINDEX', KEYS[2], 0) == ARGV[4] then
  redis.call('LPOP', KEYS[2])
  redis.call('HDEL', KEYS[3], ARGV[4])
end
local following = redis.call('LINDEX', KEYS[2], 0)
if not following then
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
  redis.call('XDEL', KEYS[1], ARGV[3])
  return {1}
end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'RETRYCOUNT', 1, 'JUSTID')
return {1, following, redis.call('HGET', KEYS[3], following) or '', redis.call('GET', KEYS[4]) or ''}
