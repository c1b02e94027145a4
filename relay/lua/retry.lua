-- Park a conversation until `due`: its token leaves the stream for the delayed set, and the
-- head message keeps its place. An empty envelope leaves the stored one unchanged (hand-back).
-- A failed attempt (an envelope given) is counted against its destination.
-- KEYS: ready, body, delayed, failures
-- ARGV: group, consumer, token, id, envelope, due_ms, conversation, destination, failures_ttl_ms
-- Returns 1 when parked, 0 when the token is no longer ours.
if not owned(KEYS[1], ARGV[1], ARGV[3], ARGV[2]) then
  return 0
end
if ARGV[5] ~= '' then
  if redis.call('HEXISTS', KEYS[2], ARGV[4]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[4], ARGV[5])
  end
  count_failure(KEYS[4], ARGV[8], ARGV[9])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[3])
redis.call('XDEL', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[3], ARGV[6], ARGV[7])
return 1
