-- One partition's numbers for operators, read atomically: messages stored, conversations
-- claimed and parked, dead letters (total and by code), failed attempts by destination over the
-- given hourly buckets, and every conversation holding a token (oldest.lua reads their heads).
-- The dead-letter counts by code are kept by finish.lua; a replay or drop leaves them too high,
-- so when they disagree with the stream's length they are recounted from the stream.
-- KEYS: ready, delayed, dead, body, dead_codes, failures_1 .. failures_n
-- ARGV: group, scan_count
-- Returns {stored, claimed, parked, dead, {code, n, …}, {destination, n, …}, {conversation, …}}
local claimed = 0
local summary = redis.pcall('XPENDING', KEYS[1], ARGV[1])
if type(summary) == 'table' and not summary.err then
  claimed = summary[1]  -- no group yet (no worker started): nothing is claimed
end

local conversations = {}
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  conversations[#conversations + 1] = entry[2][2]
end
for _, conversation in ipairs(redis.call('ZRANGE', KEYS[2], 0, -1)) do
  conversations[#conversations + 1] = conversation
end

local dead = redis.call('XLEN', KEYS[3])
local codes = redis.call('HGETALL', KEYS[5])
local counted = 0
for i = 2, #codes, 2 do
  counted = counted + tonumber(codes[i])
end
if counted ~= dead then
  local tally, start, batch = {}, '-', nil
  repeat
    batch = redis.call('XRANGE', KEYS[3], start, '+', 'COUNT', ARGV[2])
    for _, entry in ipairs(batch) do
      local code = 'unknown'
      for i = 1, #entry[2], 2 do
        if entry[2][i] == 'code' then code = entry[2][i + 1] end
      end
      tally[code] = (tally[code] or 0) + 1
    end
    if #batch > 0 then start = '(' .. batch[#batch][1] end
  until #batch < tonumber(ARGV[2])
  redis.call('DEL', KEYS[5])
  codes = {}
  for code, n in pairs(tally) do
    redis.call('HSET', KEYS[5], code, n)
    codes[#codes + 1] = code
    codes[#codes + 1] = n
  end
end

local failures, merged = {}, {}
for i = 6, #KEYS do
  local bucket = redis.call('HGETALL', KEYS[i])
  for j = 1, #bucket, 2 do
    merged[bucket[j]] = (merged[bucket[j]] or 0) + tonumber(bucket[j + 1])
  end
end
for destination, n in pairs(merged) do
  failures[#failures + 1] = destination
  failures[#failures + 1] = n
end

return {redis.call('HLEN', KEYS[4]), claimed, redis.call('ZCARD', KEYS[2]), dead, codes, failures, conversations}
