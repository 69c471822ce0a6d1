-- Step 2 of a group message or event: into members' inboxes, each at most once and in the
-- conversation's order. A per-user cursor (conversation -> the last conversation seq that
-- reached the inbox) makes it idempotent: what is at or below it is skipped; a seq past the
-- next one is a gap (another node's message of the same group has not reached this member yet),
-- answered so that the node reads the gap from the log and calls again with it first. The
-- sender's own inbox gets a copy only when they have another device; a full inbox skips the
-- message (history has it). A member's JOINED event starts their cursor afresh; their
-- LEFT or REMOVED event is the last thing they get and ends it.
-- KEYS: 6 per item: the member's 1 conversation cursors hash, 2 seq counter, 3 inbox,
--       4 epoch, 5 route hash, 6 devices sorted set
-- ARGV: as message.lua says, once per distinct message of the call (with its conversation
--       seq); then two per item: the member, and which of those messages (1, 2, ...). So a
--       message for a thousand members travels once, not a thousand times.
-- Returns one reply per item: { 0, seq or "" (no copy), routes } appended or skipped,
--   { 1, "", {} } it had it, { 2, cursor, {} } a gap after cursor, { 4, error, {} }.

local KEYS_EACH = 6
local items = #KEYS / KEYS_EACH
local messages = (#ARGV - ARGS_BEFORE - 2 * items) / ARGS_EACH
local ITEMS_AT = ARGS_BEFORE + messages * ARGS_EACH
local parsed = {}

local function names(list, user)
  return string.find(' ' .. list .. ' ', ' ' .. user .. ' ', 1, true) ~= nil
end

local function deliver(i)
  local k = (i - 1) * KEYS_EACH
  local user = ARGV[ITEMS_AT + 2 * i - 1]
  local which = tonumber(ARGV[ITEMS_AT + 2 * i])
  local m = parsed[which]
  if not m then
    m = message(which)
    parsed[which] = m
  end
  local cursors = KEYS[k + 1]
  local ev = tonumber(m.ev) or 0
  local joins = ev == EVENT_JOINED and names(m.evusers, user)
  local ends = (ev == EVENT_LEFT or ev == EVENT_REMOVED) and names(m.evusers, user)
  local cursor = tonumber(redis.call('HGET', cursors, m.conv) or '-1')
  if cursor >= 0 and not joins then
    if m.cseq <= cursor then
      return { 1, '', {} }
    end
    if m.cseq > cursor + 1 then
      return { 2, tostring(cursor), {} }
    end
  end
  local reply = { 0, '', {} }
  if user ~= m.from or has_other_device(KEYS[k + 6], m.origin) then
    local seq, routes = append_if_room(KEYS[k + 2], KEYS[k + 3], KEYS[k + 5], KEYS[k + 4], m)
    if seq then
      reply = { 0, tostring(seq), routes }
    end
  end
  if ends then
    redis.call('HDEL', cursors, m.conv)
  else
    redis.call('HSET', cursors, m.conv, m.cseq)
    redis.call('PEXPIRE', cursors, cfg.keep + cfg.slack)
  end
  return reply
end

return each_item(items, deliver, function(err)
  return { 4, err, {} }
end)
