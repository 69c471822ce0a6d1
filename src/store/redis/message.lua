-- What storing a message takes, shared by send.lua (a single server: every step in one script)
-- and the Cluster's steps, one script per hash tag: admit.lua (recipient), log.lua
-- (conversation), append.lua (recipient) and copy.lua (sender). mod.rs puts this file, after
-- lib.lua, before each of them.
--
-- ARGV, the same for all: 1 dedup ttl (ms), 2 now (ms), 3 inbox retention cut-off (ms: older
-- entries are dropped), 4 new messages an inbox takes per second (0: no limit), 5 most
-- messages an inbox holds, 6 how long the seq counter and epoch outlive the last activity (ms),
-- 7 inbox retention (ms), 8 TTL slack (ms: how far above those floors a TTL may be set, see
-- keep_alive), 9 history retention (ms), 10 most messages a conversation log keeps, 11 history
-- cut-off (ms), 12 history TTL slack (ms); then 12 per message: from, to, client_msg_id, body,
-- msg_id, sent_at (ms), conversation id, origin device, conversation seq (0 if not yet known),
-- group event kind (0: a plain message), the users it names (space-separated), group name.

local cfg = {
  dedup_ttl = ARGV[1],
  now = tonumber(ARGV[2]),
  cut = tonumber(ARGV[3]),
  rate = tonumber(ARGV[4]),
  most = tonumber(ARGV[5]),
  keep = tonumber(ARGV[6]),
  retention = tonumber(ARGV[7]),
  slack = tonumber(ARGV[8]),
  history = tonumber(ARGV[9]),
  history_most = tonumber(ARGV[10]),
  history_cut = tonumber(ARGV[11]),
  history_slack = tonumber(ARGV[12]),
}
local ARGS_BEFORE = 12
local ARGS_EACH = 12
-- Group event kinds (store::groups::EventKind).
local EVENT_CREATED, EVENT_JOINED, EVENT_LEFT, EVENT_REMOVED = 1, 2, 3, 4
local EVENT_RENAMED, EVENT_ROLE_CHANGED = 5, 6

-- Message i's fields.
local function message(i)
  local a = ARGS_BEFORE + (i - 1) * ARGS_EACH
  return {
    from = ARGV[a + 1], to = ARGV[a + 2], cmid = ARGV[a + 3], body = ARGV[a + 4],
    msg_id = ARGV[a + 5], sent_at = ARGV[a + 6], conv = ARGV[a + 7], origin = ARGV[a + 8],
    cseq = tonumber(ARGV[a + 9]), ev = tonumber(ARGV[a + 10]), evusers = ARGV[a + 11],
    evname = ARGV[a + 12],
  }
end

-- XADD's arguments after the id for m: its fields, and for a group event the event's.
local function fields(m, more)
  local f = { 'from', m.from, 'to', m.to, 'client_msg_id', m.cmid, 'body', m.body,
    'msg_id', m.msg_id, 'sent_at', m.sent_at }
  for _, v in ipairs(more) do
    f[#f + 1] = v
  end
  if m.ev ~= 0 then
    for _, v in ipairs({ 'ev', m.ev, 'evusers', m.evusers, 'evname', m.evname }) do
      f[#f + 1] = v
    end
  end
  return f
end

-- Routes, the expired-head check and the TTL check are done once per key per call: the script
-- is atomic, so none changes between two messages of one call.
local routes_of = {}
local trimmed = {}
local kept = {}

-- A user's unexpired routes, flat: { device, route, ... }; lapsed ones are deleted.
local function live_routes(key)
  local live = routes_of[key]
  if live then
    return live
  end
  live = {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local lapses = tonumber(string.match(flat[i + 1], '|(%d+)$'))
    if lapses and lapses > cfg.now then
      live[#live + 1] = flat[i]
      live[#live + 1] = flat[i + 1]
    else
      redis.call('HDEL', key, flat[i])
    end
  end
  routes_of[key] = live
  return live
end

-- Drops entries past retention from the head of an inbox, a bounded number per call; the head
-- alone is read when it has not expired.
local function trim_expired(inbox)
  if trimmed[inbox] then
    return
  end
  trimmed[inbox] = true
  local head = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1)
  if #head == 0 or (sent_at(head[1]) or cfg.cut) >= cfg.cut then
    return
  end
  drop_expired(inbox, cfg.cut, 100)
end

-- A user who never comes back leaves nothing: the inbox goes when its newest message passes
-- the retention, the counter and epoch after every cursor that could refer to them. Setting
-- the three TTLs at every message would be three writes (and AOF records) per message; instead
-- they are set to their floor plus the slack, and set again once the counter's TTL has left
-- [keep, keep + slack] (see keep_counter): so the TTLs never fall below their floors at an
-- append, and are written at most once per slack per user. The expired-head check runs then
-- too. An inbox the append may have created (it was empty: perhaps missing) gets its TTL now
-- if it has none.
local function keep_alive(seq_key, inbox, epoch, was_empty)
  if was_empty and redis.call('PTTL', inbox) < 0 then
    redis.call('PEXPIRE', inbox, cfg.retention + cfg.slack)
  end
  if kept[seq_key] then
    return
  end
  kept[seq_key] = true
  if keep_counter(seq_key, epoch, cfg.keep, cfg.slack) then
    redis.call('PEXPIRE', inbox, cfg.retention + cfg.slack)
    trim_expired(inbox)
  end
end

-- The recipient's side before anything is written: a retry of a stored message (its dedup key)
-- is answered from the key; a full inbox or one over its rate refuses the message. Returns
-- nil and the messages the inbox holds when it may be stored, else the message's reply.
local function admit(dedup, inbox, inrate, routes)
  local dup = redis.call('GET', dedup)
  if dup then
    return { 1, dup, live_routes(routes), {} }
  end
  -- Full: unread messages are never dropped to make room; the sender is told instead.
  local held = redis.call('XLEN', inbox)
  if held >= cfg.most then
    trim_expired(inbox)
    held = redis.call('XLEN', inbox)
    if held >= cfg.most then
      return { 3, tostring(held), {}, {} }
    end
  end
  -- A fixed one-second window per inbox, shared by every node.
  if cfg.rate > 0 then
    local n = redis.call('INCR', inrate)
    if n == 1 then
      redis.call('PEXPIRE', inrate, 1000)
    end
    if n > cfg.rate then
      local wait = redis.call('PTTL', inrate)
      if wait <= 0 then
        wait = 1000
      end
      return { 2, tostring(wait), {}, {} }
    end
  end
  return nil, held
end

-- Appends m to its conversation's log and returns its conversation seq: the entry id is
-- 0-<seq>, which Redis gives one past the stream's last id (kept through trimming). The log
-- keeps history_most entries and, like an inbox, goes when its newest passes the history
-- retention; its TTL is set with a slack and its expired head dropped when that is renewed.
local function log_append(log, m)
  local id
  if m.ev == 0 then
    -- A plain message (the hot path): no table to build.
    id = redis.call('XADD', log, 'MAXLEN', cfg.history_most, '0-*', 'from', m.from, 'to', m.to,
      'client_msg_id', m.cmid, 'body', m.body, 'msg_id', m.msg_id, 'sent_at', m.sent_at)
  else
    id = redis.call('XADD', log, 'MAXLEN', cfg.history_most, '0-*', unpack(fields(m, {})))
  end
  local ttl = redis.call('PTTL', log)
  if ttl < cfg.history or ttl > cfg.history + cfg.history_slack then
    redis.call('PEXPIRE', log, cfg.history + cfg.history_slack)
    drop_expired(log, cfg.history_cut, 100)
  end
  return tonumber(string.match(id, '^0%-(%d+)$'))
end

-- Appends m (with its conversation seq) to a user's inbox with the user's next seq.
local function inbox_append(seq_key, inbox, epoch, was_empty, m)
  local seq = redis.call('INCR', seq_key)
  if m.ev == 0 then
    redis.call('XADD', inbox, seq .. '-0', 'from', m.from, 'to', m.to, 'client_msg_id', m.cmid,
      'body', m.body, 'msg_id', m.msg_id, 'sent_at', m.sent_at, 'conv', m.conv, 'cseq', m.cseq)
  else
    redis.call('XADD', inbox, seq .. '-0', unpack(fields(m, { 'conv', m.conv, 'cseq', m.cseq })))
  end
  keep_alive(seq_key, inbox, epoch, was_empty)
  return seq
end

-- The value a recipient's dedup key holds: seq|msg_id|sent_at|conversation seq.
local function stored_value(seq, m)
  return seq .. '|' .. m.msg_id .. '|' .. m.sent_at .. '|' .. m.cseq
end

-- Logs m at most once per (sender, client_msg_id) (the dedup key in the log's slot): returns 0
-- and "cseq|msg_id|sent_at" when logged now, 1 and the first time's value when logged before.
local function log_once(log, dedup, m)
  local value = redis.call('GET', dedup)
  if value then
    return 1, value
  end
  value = log_append(log, m) .. '|' .. m.msg_id .. '|' .. m.sent_at
  redis.call('SET', dedup, value, 'PX', cfg.dedup_ttl)
  return 0, value
end

-- Whether a user has an enrolled device other than `origin` (two of their devices are read:
-- at most one of them is origin).
local function has_other_device(devices, origin)
  for _, device in ipairs(redis.call('ZRANGE', devices, 0, 1)) do
    if device ~= origin then
      return true
    end
  end
  return false
end

-- Appends m to a user's inbox unless it is full (a device that far behind pages history
-- instead). Returns its seq there and the user's live routes, or nil.
local function append_if_room(seq_key, inbox, route, epoch, m)
  local held = redis.call('XLEN', inbox)
  if held >= cfg.most then
    return nil
  end
  return inbox_append(seq_key, inbox, epoch, held == 0, m), live_routes(route)
end

-- The sender's copy of m for their other devices: only when they have an enrolled device other
-- than the one it came from, and room. Returns { seq, device, route, ... } (the sender's
-- routes), or {} when no copy was made.
local function sender_copy(seq_key, inbox, route, epoch, devices, m)
  if m.from == m.to or not has_other_device(devices, m.origin) then
    return {}
  end
  local seq, routes = append_if_room(seq_key, inbox, route, epoch, m)
  if not seq then
    return {}
  end
  local reply = { tostring(seq) }
  for _, v in ipairs(routes) do
    reply[#reply + 1] = v
  end
  return reply
end
