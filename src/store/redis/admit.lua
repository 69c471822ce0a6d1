-- Cluster step 1 of storing messages (send.lua does all steps on a single server), for one
-- recipient's messages: a retry of a stored message is answered from its dedup key; a full
-- inbox or one over its rate refuses the message. Admitted messages go on to log.lua.
-- KEYS: 4 per message: the recipient's 1 dedup key, 2 inbox, 3 inbox rate counter, 4 route hash
-- ARGV: as message.lua says.
-- Returns one reply per message: { 0, messages the inbox holds, {}, {} } admitted, or send.lua's
-- reply for a duplicate (1), over the rate (2), a full inbox (3) or an error (4).

local KEYS_EACH = 4

local function check(i)
  local k = (i - 1) * KEYS_EACH
  local refused, held = admit(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4])
  return refused or { 0, tostring(held), {}, {} }
end

return each_item(#KEYS / KEYS_EACH, check, function(err)
  return { 4, err, {}, {} }
end)
