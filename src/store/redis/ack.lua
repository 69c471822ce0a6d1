-- Moves an enrolled device's ack cursor forward (never past the last seq), marks it seen, and
-- trims the inbox below the lowest cursor of all the user's devices, found in O(log n) in a
-- sorted set. A device without a cursor is registered at 0 or up_to, so trimming waits for it.
-- KEYS: 1 ack hash (device -> cursor), 2 seq counter, 3 inbox stream,
--       4 lowest-cursor sorted set (device by cursor), 5 devices sorted set (device by last seen),
--       6 epoch
-- ARGV: 1 device, 2 up_to, 3 now (ms), 4 how long a device is kept unseen (ms),
--       5 how long the seq counter and epoch outlive the last activity (ms)
-- Returns the device's cursor.

-- The sorted set must hold every cursor of the hash: written before the set existed, or by a
-- node of an older version during a rolling upgrade. Rebuilt when the counts differ.
if redis.call('HLEN', KEYS[1]) ~= redis.call('ZCARD', KEYS[4]) then
  local flat = redis.call('HGETALL', KEYS[1])
  redis.call('DEL', KEYS[4])
  for i = 1, #flat, 2 do
    redis.call('ZADD', KEYS[4], tonumber(flat[i + 1]), flat[i])
    redis.call('ZADD', KEYS[5], 'NX', tonumber(ARGV[3]), flat[i])
  end
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local target = math.min(tonumber(ARGV[2]), last)
if not redis.call('ZSCORE', KEYS[5], ARGV[1]) then
  -- Not (or no longer) one of the user's devices: it logged out, or was forgotten. Its ack
  -- stores nothing, so no cursor comes back to hold the inbox.
  return target
end
local current = redis.call('HGET', KEYS[1], ARGV[1])
local cursor = target
if current then
  cursor = math.max(tonumber(current), target)
end
if cursor ~= tonumber(current or '-1') then
  redis.call('HSET', KEYS[1], ARGV[1], cursor)
  redis.call('ZADD', KEYS[4], cursor, ARGV[1])
end
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
local lowest = redis.call('ZRANGE', KEYS[4], 0, 0, 'WITHSCORES')
if #lowest == 2 and tonumber(lowest[2]) > 0 then
  redis.call('XTRIM', KEYS[3], 'MINID', (tonumber(lowest[2]) + 1) .. '-0')
end
-- A user whose devices all stay away this long leaves no cursors behind.
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[4], ARGV[4])
redis.call('PEXPIRE', KEYS[5], ARGV[4])
-- The counter and epoch outlive every cursor that refers to them.
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PEXPIRE', KEYS[6], ARGV[5])
return cursor
