-- Cluster step 3 of storing messages, sender's side (beside append.lua): the sender's copy of
-- each logged message for their other devices (message.lua's sender_copy), made at most once:
-- the sender's key for the message says it was.
-- KEYS: 6 per message: the sender's 1 key for this message's copy, 2 seq counter, 3 inbox,
--       4 route hash, 5 epoch, 6 devices sorted set
-- ARGV: as message.lua says.
-- Returns one reply per message: { 0, { seq, device, route, ... } or {} } or { 4, error }.

local KEYS_EACH = 6

local function copy(i)
  local k = (i - 1) * KEYS_EACH
  local m = message(i)
  if redis.call('SET', KEYS[k + 1], '1', 'NX', 'PX', cfg.dedup_ttl) == false then
    return { 0, {} }
  end
  return { 0, sender_copy(KEYS[k + 2], KEYS[k + 3], KEYS[k + 4], KEYS[k + 5], KEYS[k + 6], m) }
end

return each_item(#KEYS / KEYS_EACH, copy, function(err)
  return { 4, err }
end)
