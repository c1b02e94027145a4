-- The head message of each conversation named by a batch of tokens, and the partition's pause.
-- KEYS: body, pause, mailbox_1 .. mailbox_n
-- Returns {pause_ms, id_1, envelope_1, ..., id_n, envelope_n}; '' where absent.
local out = {redis.call('GET', KEYS[2]) or ''}
for i = 3, #KEYS do
  local id = redis.call('LINDEX', KEYS[i], 0)
  out[#out + 1] = id or ''
  out[#out + 1] = (id and redis.call('HGET', KEYS[1], id)) or ''
end
return out
