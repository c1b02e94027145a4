-- Take over tokens whose worker has been silent for min_idle_ms (XAUTOCLAIM), with how many
-- times each has been handed to a worker (1 for a first read; each takeover adds one).
-- KEYS: ready   ARGV: group, consumer, min_idle_ms, limit
-- Returns {id_1, conversation_1, deliveries_1, …}.
local out, cursor, taken = {}, '0-0', 0
repeat
  local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], cursor,
                           'COUNT', tonumber(ARGV[4]) - taken)
  cursor = reply[1]
  for _, entry in ipairs(reply[2]) do
    local fields = entry[2]
    if fields then
      local pending = redis.call('XPENDING', KEYS[1], ARGV[1], entry[1], entry[1], 1)
      out[#out + 1] = entry[1]
      out[#out + 1] = fields[2]
      out[#out + 1] = pending[1] and pending[1][4] or 1
      taken = taken + 1
    end
  end
until cursor == '0-0' or taken >= tonumber(ARGV[4])
return out
