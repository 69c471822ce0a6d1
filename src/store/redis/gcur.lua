-- Moves a device's cursors in broadcast groups forward (never back).
-- KEYS: 1 the user's cursors hash (`<device> <group>` -> conversation seq)
-- ARGV: the hash's lifetime (ms: a device unseen that long is forgotten), then pairs of a field
--       and the conversation seq acked.
local key = KEYS[1]
for i = 2, #ARGV, 2 do
  local seq = tonumber(ARGV[i + 1])
  if seq > tonumber(redis.call('HGET', key, ARGV[i]) or '0') then
    redis.call('HSET', key, ARGV[i], seq)
  end
end
redis.call('PEXPIRE', key, ARGV[1])
return 0
