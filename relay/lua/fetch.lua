-- The head message of each conversation named by a batch of tokens.
-- KEYS: body, mailbox_1 .. mailbox_n
-- Returns {id_1, envelope_1, ..., id_n, envelope_n}; '' where a mailbox or body is missing.
local out = {}
for i = 2, #KEYS do
  local id = redis.call('LINDEX', KEYS[i], 0)
  out[#out + 1] = id or ''
  out[#out + 1] = (id and redis.call('HGET', KEYS[1], id)) or ''
end
return out
