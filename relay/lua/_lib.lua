-- Helpers prepended to every relay script. Every key a script touches belongs to one
-- partition (one hash tag), so each script runs unchanged on Redis Cluster.
--
-- The invariant they keep: a conversation whose mailbox is non-empty has exactly one token,
-- either in the ready stream (unread or pending with one consumer) or in the delayed set.

-- Is stream entry `token` pending in `group` and owned by `consumer`?
local function owned(ready, group, token, consumer)
  local entry = redis.call('XPENDING', ready, group, token, token, 1)
  return #entry == 1 and entry[1][2] == consumer
end

-- Put a message at the back of its conversation's mailbox; a first message creates the token.
local function append(body, mailbox, ready, id, envelope, conversation)
  redis.call('HSET', body, id, envelope)
  if redis.call('RPUSH', mailbox, id) == 1 then
    redis.call('XADD', ready, '*', 'c', conversation)
  end
end

-- Retire a token; the conversation gets a new one if messages are still waiting.
local function release(ready, group, token, mailbox, conversation)
  redis.call('XACK', ready, group, token)
  redis.call('XDEL', ready, token)
  if redis.call('LLEN', mailbox) > 0 then
    redis.call('XADD', ready, '*', 'c', conversation)
  end
end


-- Count one failed delivery attempt against its destination, in the current hour's bucket.
local function count_failure(failures, destination, ttl_ms)
  redis.call('HINCRBY', failures, destination, 1)
  redis.call('PEXPIRE', failures, ttl_ms)
end
