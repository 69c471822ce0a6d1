-- Moves a device's ack cursor forward (never past the last seq) and trims the inbox below the
-- lowest cursor of all the user's devices. A device without a cursor is registered at 0 or
-- up_to, so trimming waits for it.
-- KEYS: 1 ack hash, 2 seq counter, 3 inbox stream
-- ARGV: 1 device, 2 up_to
-- Returns the device's cursor.
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local target = math.min(tonumber(ARGV[2]), last)
local current = redis.call('HGET', KEYS[1], ARGV[1])
local cursor = target
if current then
  cursor = math.max(tonumber(current), target)
end
if cursor ~= tonumber(current or '-1') then
  redis.call('HSET', KEYS[1], ARGV[1], cursor)
end
local lowest = nil
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do
  local n = tonumber(v)
  if lowest == nil or n < lowest then
    lowest = n
  end
end
if lowest and lowest > 0 then
  redis.call('XTRIM', KEYS[3], 'MINID', (lowest + 1) .. '-0')
end
return cursor
