-- Extends a device's route if it still belongs to the given session, or takes the device over
-- when it has no route or only a lapsed one (a lapsed route is gone, as everywhere else);
-- leaves it alone if another session holds an unexpired route.
-- KEYS: 1 route hash
-- ARGV: 1 device, 2 session_id, 3 new value, 4 ttl (ms), 5 now (ms)
-- Returns 1 if the route is this session's, 0 if another session owns the device.
local route = redis.call('HGET', KEYS[1], ARGV[1])
if route then
  local session, lapses = string.match(route, '|([^|]*)|%d+|(%d+)$')
  if session ~= ARGV[2] and tonumber(lapses or '0') > tonumber(ARGV[5]) then
    return 0
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
-- The hash lives as long as its longest-lived route.
redis.call('PEXPIRE', KEYS[1], ARGV[4], 'NX')
redis.call('PEXPIRE', KEYS[1], ARGV[4], 'GT')
return 1
