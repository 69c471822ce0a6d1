-- Removes a device's route only if it still belongs to the given session (a newer session of
-- the same device, possibly on another node, must keep its route).
-- KEYS: 1 route hash
-- ARGV: 1 device, 2 session_id
-- Returns 1 if removed, else 0.
local route = redis.call('HGET', KEYS[1], ARGV[1])
if route and string.match(route, '|([^|]*)|%d+|%d+$') == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
  return 1
end
return 0
