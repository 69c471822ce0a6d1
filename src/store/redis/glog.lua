-- Step 1 of a group message (the group's slot): only a member sends; at most once per (sender,
-- client_msg_id); appended to the group's log. The node then appends it to each member's inbox
-- (gdeliver.lua) before the sender is acked.
-- KEYS: 4 per message: 1 group hash, 2 members hash, 3 the conversation log, 4 its dedup key
--       for the message
-- ARGV: as message.lua says; then, after the messages, the fan-out limit and the membership
--   version the node knows.
-- Returns one reply per message: { 0 | 1 (logged | logged before), "cseq|msg_id|sent_at",
--   version, members (when the version differs from the node's, else {}), the seq the group
--   broadcasts from (0: it does not) }; { 5, "", 0, {}, 0 } the sender is not a member (or no
--   such group); { 4, error, 0, {}, 0 }.
-- A group with more members than the limit broadcasts from the first message logged so, for good:
-- the node stores nothing per member for it.

local KEYS_EACH = 4
local known = ARGV[#ARGV]
local fanout = tonumber(ARGV[#ARGV - 1])

local function log(i)
  local k = (i - 1) * KEYS_EACH
  local m = message(i)
  if not redis.call('HGET', KEYS[k + 2], m.from) then
    return { 5, '', 0, {}, 0 }
  end
  local code, value = log_once(KEYS[k + 3], KEYS[k + 4], m)
  local ver = redis.call('HGET', KEYS[k + 1], 'ver') or '0'
  local bcast = tonumber(redis.call('HGET', KEYS[k + 1], 'bcast') or '0')
  if bcast == 0 and code == 0 and redis.call('HLEN', KEYS[k + 2]) > fanout then
    bcast = tonumber(string.match(value, '^(%d+)'))
    redis.call('HSET', KEYS[k + 1], 'bcast', bcast)
  end
  local list = {}
  if ver ~= known then
    list = redis.call('HKEYS', KEYS[k + 2])
  end
  return { code, value, tonumber(ver), list, bcast }
end

return each_item(#KEYS / KEYS_EACH, log, function(err)
  return { 4, err, 0, {}, 0 }
end)
