-- Gives a device's route to a session unless an unexpired route of a session that started
-- later holds it (so the later Hello wins, whichever write lands last).
-- KEYS: 1 route hash
-- ARGV: 1 device, 2 value "node|session|started_at|lapses_at", 3 started_at (ms),
--       4 ttl (ms), 5 now (ms)
-- Returns { 1, replaced value or nil } when written, { 0, holding value } when superseded.
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old then
  local started, lapses = string.match(old, '|(%d+)|(%d+)$')
  if started and tonumber(lapses) > tonumber(ARGV[5]) and tonumber(started) > tonumber(ARGV[3]) then
    return { 0, old }
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
-- The hash lives as long as its longest-lived route.
redis.call('PEXPIRE', KEYS[1], ARGV[4], 'NX')
redis.call('PEXPIRE', KEYS[1], ARGV[4], 'GT')
return { 1, old or false }
