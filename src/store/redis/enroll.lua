-- Admits a device at Hello: forgets the devices unseen for the keep time (their cursors go, so
-- they no longer hold back trimming), refuses a device not yet known when the user has the
-- maximum, and marks this one seen.
-- KEYS: 1 ack hash (device -> cursor), 2 lowest-cursor sorted set, 3 devices sorted set
-- ARGV: 1 device, 2 now (ms), 3 how long a device is kept unseen (ms), 4 most devices
-- Returns { 1, devices known } when admitted, { 0, devices known } when refused.
local now = tonumber(ARGV[2])
-- Devices with a cursor but no last-seen time (written before the set existed) count as seen
-- now, so that they too expire.
if redis.call('HLEN', KEYS[1]) > redis.call('ZCARD', KEYS[3]) then
  local devices = redis.call('HKEYS', KEYS[1])
  for _, d in ipairs(devices) do
    redis.call('ZADD', KEYS[3], 'NX', now, d)
  end
end
-- At most 100 forgotten per Hello: the rest go at the next ones.
local stale = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. (now - tonumber(ARGV[3])),
  'LIMIT', 0, 100)
for _, d in ipairs(stale) do
  redis.call('HDEL', KEYS[1], d)
  redis.call('ZREM', KEYS[2], d)
  redis.call('ZREM', KEYS[3], d)
end
local known = redis.call('ZCARD', KEYS[3])
if not redis.call('ZSCORE', KEYS[3], ARGV[1]) then
  if known >= tonumber(ARGV[4]) then
    return { 0, known }
  end
  known = known + 1
end
redis.call('ZADD', KEYS[3], now, ARGV[1])
redis.call('PEXPIRE', KEYS[3], ARGV[3])
return { 1, known }
