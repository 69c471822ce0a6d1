-- Extends a device's route if it still belongs to the given session, or re-creates it if it
-- lapsed; leaves it alone if another session took the device over.
-- KEYS: 1 route hash
-- ARGV: 1 device, 2 session_id, 3 new value, 4 ttl (ms)
-- Returns 1 if the route is this session's, 0 if another session owns the device.
local route = redis.call('HGET', KEYS[1], ARGV[1])
if route and string.match(route, '|([^|]*)|%d+|%d+$') ~= ARGV[2] then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
-- The hash lives as long as its longest-lived route.
redis.call('PEXPIRE', KEYS[1], ARGV[4], 'NX')
redis.call('PEXPIRE', KEYS[1], ARGV[4], 'GT')
return 1
