-- Drops entries past retention from the head of an inbox stream, at most ARGV[2] of them: what
-- a read skipped as expired is not scanned again.
-- KEYS: 1 inbox stream
-- ARGV: 1 retention cut-off (ms: entries sent before it are dropped), 2 most entries to look at
-- Returns how many entries were dropped.
local cut = tonumber(ARGV[1])
local last = nil
local dropped = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))) do
  local sent_at = nil
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'sent_at' then
      sent_at = tonumber(fields[i + 1])
    end
  end
  if (sent_at or cut) >= cut then
    break
  end
  last = entry[1]
  dropped = dropped + 1
end
if last then
  local seq = tonumber(string.match(last, '^(%d+)'))
  redis.call('XTRIM', KEYS[1], 'MINID', (seq + 1) .. '-0')
end
return dropped
