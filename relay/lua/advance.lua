-- Done with conversations' head messages, and on to each one's next under the same claim: a
-- head is dropped, and if another message waits, the token stays this consumer's (idle time
-- reset, counted as a first delivery again, so takeovers stay per message) and that message is
-- returned; a worker that dies holding it leaves the claim pending, reclaimable as any other.
-- With no message left, the token is retired. Nothing happens to a token this consumer lost.
-- One call takes every such ack of one partition (a busy worker's acks, group-committed).
-- KEYS: ready, body, pause, then per token: mailbox_i
-- ARGV: group, consumer, then per token: token_i, id_i
-- Returns {pause_ms or '', then per token: state_i, next_id_i, next_envelope_i}: state 0 when
-- the token is no longer ours, 1 when its conversation is empty (token retired), 2 when it
-- continues with next_id_i ('' otherwise).
local ready, body, group, consumer = KEYS[1], KEYS[2], ARGV[1], ARGV[2]
local out = {redis.call('GET', KEYS[3]) or ''}
for i = 1, #KEYS - 3 do
  local mailbox, token, id = KEYS[3 + i], ARGV[1 + 2 * i], ARGV[2 + 2 * i]
  if not owned(ready, group, token, consumer) then
    out[#out + 1], out[#out + 2], out[#out + 3] = 0, '', ''
  else
    if redis.call('LINDEX', mailbox, 0) == id then
      redis.call('LPOP', mailbox)
      redis.call('HDEL', body, id)
    end
    local following = redis.call('LINDEX', mailbox, 0)
    if not following then
      redis.call('XACK', ready, group, token)
      redis.call('XDEL', ready, token)
      out[#out + 1], out[#out + 2], out[#out + 3] = 1, '', ''
    else
      redis.call('XCLAIM', ready, group, consumer, 0, token, 'RETRYCOUNT', 1, 'JUSTID')
      out[#out + 1], out[#out + 2], out[#out + 3] = 2, following, redis.call('HGET', body, following) or ''
    end
  end
end
return out
