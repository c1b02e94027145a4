-- Keep this consumer's claims fresh (reset their idle time) so a live delivery is never
-- reclaimed by another worker. Tokens already taken over are left alone and reported.
-- KEYS: ready   ARGV: group, consumer, token_1 .. token_n
-- Returns the tokens this consumer no longer owns.
local lost = {}
for i = 3, #ARGV do
  if owned(KEYS[1], ARGV[1], ARGV[i], ARGV[2]) then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
