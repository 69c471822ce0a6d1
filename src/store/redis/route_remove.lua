-- Removes a device's route only if it still belongs to the given session (a newer session of
-- the same device, possibly on another node, must keep its route).
-- KEYS: 1 route hash
-- ARGV: 1 device, 2 session_id, 3 now (ms)
-- Returns 1 if an unexpired route was removed, else 0 (a lapsed route is gone already; it is
-- removed all the same).
local route = redis.call('HGET', KEYS[1], ARGV[1])
if route then
  local session, lapses = string.match(route, '|([^|]*)|%d+|(%d+)$')
  if session == ARGV[2] then
    redis.call('HDEL', KEYS[1], ARGV[1])
    if tonumber(lapses or '0') > tonumber(ARGV[3]) then
      return 1
    end
  end
end
return 0
