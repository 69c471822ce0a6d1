-- Step 1 of a group message (the group's slot): only a member sends; at most once per (sender,
-- client_msg_id); appended to the group's log. The node then appends it to each member's inbox
-- (gdeliver.lua) before the sender is acked.
-- KEYS: 4 per message: 1 group hash, 2 members hash, 3 the conversation log, 4 its dedup key
--       for the message
-- ARGV: as message.lua says; then, after the messages, the membership version the node knows.
-- Returns one reply per message: { 0 | 1 (logged | logged before), "cseq|msg_id|sent_at",
--   version, members (when the version differs from the node's, else {}) }; { 5, "", 0, {} }
--   the sender is not a member (or no such group); { 4, error, 0, {} }.

local KEYS_EACH = 4
local known = ARGV[#ARGV]

local function log(i)
  local k = (i - 1) * KEYS_EACH
  local m = message(i)
  if not redis.call('HGET', KEYS[k + 2], m.from) then
    return { 5, '', 0, {} }
  end
  local code, value = log_once(KEYS[k + 3], KEYS[k + 4], m)
  local ver = redis.call('HGET', KEYS[k + 1], 'ver') or '0'
  local list = {}
  if ver ~= known then
    list = redis.call('HKEYS', KEYS[k + 2])
  end
  return { code, value, tonumber(ver), list }
end

return each_item(#KEYS / KEYS_EACH, log, function(err)
  return { 4, err, 0, {} }
end)
