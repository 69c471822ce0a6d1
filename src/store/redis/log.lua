-- Cluster step 2 of storing messages, for one conversation's admitted messages: each is
-- appended to the conversation's log at most once per (sender, client_msg_id), so a retry after
-- a failure between the steps finds the seq it got (the steps after this one do not repeat
-- themselves either: append.lua checks the recipient's dedup key, copy.lua the sender's).
-- KEYS: 2 per message: 1 the conversation log, 2 its dedup key for the message
-- ARGV: as message.lua says.
-- Returns one reply per message: { 0 | 1 (logged | logged before), "cseq|msg_id|sent_at" } or
-- { 4, error }.

local KEYS_EACH = 2

local function log(i)
  local k = (i - 1) * KEYS_EACH
  local code, value = log_once(KEYS[k + 1], KEYS[k + 2], message(i))
  return { code, value }
end

return each_item(#KEYS / KEYS_EACH, log, function(err)
  return { 4, err }
end)
