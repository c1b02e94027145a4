-- Hold deliveries in a partition until `until_ms` (a 429's Retry-After), never shortening a pause.
-- KEYS: pause   ARGV: until_ms, ttl_ms
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
return 1
