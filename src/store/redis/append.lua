-- Cluster step 3 of storing messages, for one recipient's logged messages (with the seq,
-- msg_id and sent_at log.lua gave them): each is appended to the recipient's inbox unless its
-- dedup key says it already was, and the recipient's routes are read.
-- KEYS: 5 per message: the recipient's 1 seq counter, 2 inbox, 3 dedup key, 4 route hash,
--       5 epoch
-- ARGV: as message.lua says.
-- Returns one reply per message: send.lua's { 0 | 1, "seq|msg_id|sent_at|cseq", routes, {} } or
-- { 4, error, {}, {} }.

local KEYS_EACH = 5

local function append(i)
  local k = (i - 1) * KEYS_EACH
  local m = message(i)
  local dup = redis.call('GET', KEYS[k + 3])
  if dup then
    return { 1, dup, live_routes(KEYS[k + 4]), {} }
  end
  local seq = inbox_append(KEYS[k + 1], KEYS[k + 2], KEYS[k + 5], true, m)
  local stored = stored_value(seq, m)
  redis.call('SET', KEYS[k + 3], stored, 'PX', cfg.dedup_ttl)
  return { 0, stored, live_routes(KEYS[k + 4]), {} }
end

return each_item(#KEYS / KEYS_EACH, append, function(err)
  return { 4, err, {}, {} }
end)
