-- One server only (it reads markers of other partitions, which a cluster would refuse): bind
-- each id to this partition and queue it, in one call. On a cluster, bind.lua and seen.lua do
-- the binding first and enqueue.lua the queueing.
-- KEYS: body, ready, then per message: seen_i, mailbox_i, identity_i
-- ARGV: dedup_ms, now_ms, stale_ms, partition, tag_start, then per message: id_i, envelope_i, conversation_i
--   (partition p's tag is tag_start .. two digits .. '}', as Keys builds it)
-- Returns per message: 1 queued, 0 duplicate (here, or for another route), 2 being accepted for
-- another route right now (the caller answers 503; the sender retries).
local dedup, now, stale, here = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local out = {}
for i = 1, (#KEYS - 2) / 3 do
  local seen, mailbox, identity = KEYS[3 * i], KEYS[3 * i + 1], KEYS[3 * i + 2]
  local id, envelope, conversation = ARGV[3 * i + 3], ARGV[3 * i + 4], ARGV[3 * i + 5]
  local bound = redis.call('GET', identity)
  local other, at = nil, nil
  if bound then
    other, at = string.match(bound, '^(%d+):(%d+)$')
  end
  if bound and other ~= here then
    local marker = ARGV[5] .. string.format('%02d', tonumber(other)) .. '}:seen:' .. id
    if redis.call('SET', marker, '1', 'XX', 'KEEPTTL') then
      out[i] = 0  -- accepted for another route before
    elseif now - tonumber(at) < tonumber(stale) then
      out[i] = 2
    else  -- left by an attempt that died between binding and queueing: move it here
      redis.call('SET', identity, here .. ':' .. now, 'PX', dedup)
    end
  elseif bound then
    redis.call('SET', identity, bound, 'KEEPTTL')  -- so a WAIT after this covers the first write
  else
    redis.call('SET', identity, here .. ':' .. now, 'PX', dedup)
  end
  if out[i] == nil then
    if redis.call('SET', seen, '1', 'NX', 'PX', dedup) then
      append(KEYS[1], mailbox, KEYS[2], id, envelope, conversation)
      out[i] = 1
    else
      redis.call('SET', seen, '1', 'XX', 'KEEPTTL')  -- so a WAIT after this covers the first write
      out[i] = 0
    end
  end
end
return out
