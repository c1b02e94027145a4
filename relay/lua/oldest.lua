-- When the oldest of these conversations' head messages entered the queue. A mailbox is in
-- arrival order, so its head is its oldest message.
-- KEYS: body, mailbox_1 .. mailbox_n
-- Returns the earliest `queued` time (ms), or -1 when no head is readable.
local oldest = -1
for i = 2, #KEYS do
  local id = redis.call('LINDEX', KEYS[i], 0)
  local raw = id and redis.call('HGET', KEYS[1], id)
  if raw then
    local ok, envelope = pcall(cjson.decode, raw)
    local queued = ok and type(envelope) == 'table' and tonumber(envelope.queued)
    if queued then
      local ms = math.floor(queued * 1000)
      if oldest < 0 or ms < oldest then oldest = ms end
    end
  end
end
return oldest
