-- Stores a batch of messages on a single Redis server (group commit), each in one atomic step:
-- admitted by the recipient's inbox (at most once per (sender, client_msg_id), within its
-- bounds), appended to its conversation's log, then to the recipient's inbox, then copied to
-- the sender's inbox for their other devices; the recipient's and sender's live routes are read
-- with it. Messages are taken in order, so one conversation's messages get consecutive seqs in
-- batch order; one that cannot be taken (inbox full, over its rate, an error) fails alone.
-- KEYS: 12 per message, in message order: recipient's 1 seq counter, 2 inbox, 3 dedup key,
--       4 route hash, 5 inbox rate counter, 6 epoch; 7 the conversation log; sender's 8 seq
--       counter, 9 inbox, 10 route hash, 11 epoch, 12 devices sorted set
-- ARGV: as message.lua says.
-- Returns one reply per message:
--   { 0 | 1 (stored | duplicate), "seq|msg_id|sent_at|cseq", { device, route, ... },
--     { sender's seq, device, route, ... } or {} (no sender copy) }
--   { 2, ms until the inbox takes more, {}, {} }   over the inbox rate: nothing written
--   { 3, messages held, {}, {} }                   inbox full: nothing written
--   { 4, error, {}, {} }                           this message failed

local KEYS_EACH = 12

local function send(i)
  local k = (i - 1) * KEYS_EACH
  local m = message(i)
  local refused, held = admit(KEYS[k + 3], KEYS[k + 2], KEYS[k + 5], KEYS[k + 4])
  if refused then
    return refused
  end
  m.cseq = log_append(KEYS[k + 7], m)
  local seq = inbox_append(KEYS[k + 1], KEYS[k + 2], KEYS[k + 6], held == 0, m)
  local stored = stored_value(seq, m)
  redis.call('SET', KEYS[k + 3], stored, 'PX', cfg.dedup_ttl)
  local copy = sender_copy(KEYS[k + 8], KEYS[k + 9], KEYS[k + 10], KEYS[k + 11], KEYS[k + 12], m)
  return { 0, stored, live_routes(KEYS[k + 4]), copy }
end

return each_item(#KEYS / KEYS_EACH, send, function(err)
  return { 4, err, {}, {} }
end)
