-- Move an identity to another partition if it is still bound as the caller last saw it (a first
-- attempt that bound it and never queued the message, long ago).
-- KEYS: identity   ARGV: binding seen, new binding, window_ms
-- Returns 1 when moved, 0 when the binding changed meanwhile.
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
