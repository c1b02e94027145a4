-- Move conversations whose retry time has come back into the ready stream.
-- KEYS: delayed, ready   ARGV: now_ms, limit
-- Returns {moved, next_due_ms} with next_due_ms = '-1' when nothing else is waiting.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, conversation in ipairs(due) do
  redis.call('ZREM', KEYS[1], conversation)
  redis.call('XADD', KEYS[2], '*', 'c', conversation)
end
local following = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#due, following[2] or '-1'}
