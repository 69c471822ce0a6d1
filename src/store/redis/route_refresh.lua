-- Refreshes a batch of device routes (group commit). Each one is extended if it still belongs
-- to the given session, or taken over when the device has no route or only a lapsed one (a
-- lapsed route is gone, as everywhere else); left alone if another session holds an unexpired
-- route. Refreshes are taken in order; one that fails fails alone.
-- KEYS: 1 per refresh, in order: the user's route hash
-- ARGV: 1 now (ms); then 4 per refresh: device, session_id, new value, ttl (ms)
-- Returns one reply per refresh: { 0, 1 | 0 (the route is this session's | another's) } or
-- { 4, error }.

local now = tonumber(ARGV[1])
local ARGS_BEFORE = 1

local function refresh(i)
  local key = KEYS[i]
  local a = ARGS_BEFORE + (i - 1) * 4
  local device, session_id, value, ttl = ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4]
  local route = redis.call('HGET', key, device)
  if route then
    local session, lapses = string.match(route, '|([^|]*)|%d+|(%d+)$')
    if session ~= session_id and tonumber(lapses or '0') > now then
      return { 0, 0 }
    end
  end
  redis.call('HSET', key, device, value)
  -- The hash lives as long as its longest-lived route.
  redis.call('PEXPIRE', key, ttl, 'NX')
  redis.call('PEXPIRE', key, ttl, 'GT')
  return { 0, 1 }
end

return each_item(#KEYS, refresh, function(err)
  return { 4, err }
end)
