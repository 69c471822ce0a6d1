-- Appends a batch of messages (group commit), each to its recipient's inbox at most once per
-- (sender, client_msg_id), and reads each recipient's live routes: one atomic round trip for the
-- whole batch. Messages are taken in order, so two for one inbox get consecutive seqs in batch
-- order; one that cannot be taken (inbox full, over its rate, an error) fails alone.
-- KEYS: 6 per message, in message order: 1 seq counter, 2 inbox stream, 3 dedup key,
--       4 route hash, 5 inbox rate counter, 6 epoch
-- ARGV: 1 dedup ttl (ms), 2 now (ms), 3 retention cut-off (ms: older entries are dropped),
--       4 new messages an inbox takes per second (0: no limit), 5 most messages an inbox holds,
--       6 how long the seq counter and epoch outlive the last activity (ms), 7 retention (ms),
--       8 TTL slack (ms: how far above those floors a TTL may be set, see keep_alive);
--       then 6 per message: from, to, client_msg_id, body, msg_id, sent_at (ms)
-- Returns one reply per message:
--   { 0 | 1 (stored | duplicate), "seq|msg_id|sent_at", { device, route, device, route, ... } }
--   { 2, ms until the inbox takes more, {} }   over the inbox rate: nothing written
--   { 3, messages held, {} }                   inbox full: nothing written
--   { 4, error, {} }                           this message failed

local now = tonumber(ARGV[2])
local cut = tonumber(ARGV[3])
local rate = tonumber(ARGV[4])
local most = tonumber(ARGV[5])
local keep = tonumber(ARGV[6])
local retention = tonumber(ARGV[7])
local slack = tonumber(ARGV[8])
local ARGS_BEFORE = 8

-- Routes and the expired-head check are done once per recipient per batch: the script is
-- atomic, so neither changes between two messages of one batch.
local routes_of = {}
local trimmed = {}
local kept = {}

local function live_routes(key)
  local live = routes_of[key]
  if live then
    return live
  end
  live = {}
  local flat = redis.call('HGETALL', key)
  for i = 1, #flat, 2 do
    local lapses = tonumber(string.match(flat[i + 1], '|(%d+)$'))
    if lapses and lapses > now then
      live[#live + 1] = flat[i]
      live[#live + 1] = flat[i + 1]
    else
      redis.call('HDEL', key, flat[i])
    end
  end
  routes_of[key] = live
  return live
end

-- Drops entries past retention from the head of the stream, a bounded number per call; the
-- head alone is read when it has not expired.
local function trim_expired(inbox)
  if trimmed[inbox] then
    return
  end
  trimmed[inbox] = true
  local head = redis.call('XRANGE', inbox, '-', '+', 'COUNT', 1)
  if #head == 0 or (sent_at(head[1]) or cut) >= cut then
    return
  end
  drop_expired(inbox, cut, 100)
end

-- A user who never comes back leaves nothing: the inbox goes when its newest message passes
-- the retention, the counter and epoch after every cursor that could refer to them. Setting
-- the three TTLs at every message would be three writes (and AOF records) per message; instead
-- they are set to their floor plus `slack`, and set again once the counter's TTL has left
-- [keep, keep + slack] (slack has passed, or another script or a changed config set it): so the
-- TTLs never fall below their floors at an append, and are written at most once per slack per
-- user. The expired-head check runs then too. An inbox the append created (it was empty:
-- perhaps missing) gets its TTL now if it has none.
local function keep_alive(seq_key, inbox, epoch, was_empty)
  if was_empty and redis.call('PTTL', inbox) < 0 then
    redis.call('PEXPIRE', inbox, retention + slack)
  end
  if kept[seq_key] then
    return
  end
  kept[seq_key] = true
  if keep_counter(seq_key, epoch, keep, slack) then
    redis.call('PEXPIRE', inbox, retention + slack)
    trim_expired(inbox)
  end
end

local function append(i)
  local k = (i - 1) * 6
  local a = ARGS_BEFORE + (i - 1) * 6
  local seq_key, inbox, dedup, routes = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local inrate, epoch = KEYS[k + 5], KEYS[k + 6]
  local dup = redis.call('GET', dedup)
  if dup then
    return { 1, dup, live_routes(routes) }
  end
  -- Full: unread messages are never dropped to make room; the sender is told instead.
  local held = redis.call('XLEN', inbox)
  if held >= most then
    trim_expired(inbox)
    held = redis.call('XLEN', inbox)
    if held >= most then
      return { 3, tostring(held), {} }
    end
  end
  -- A fixed one-second window per inbox, shared by every node.
  if rate > 0 then
    local n = redis.call('INCR', inrate)
    if n == 1 then
      redis.call('PEXPIRE', inrate, 1000)
    end
    if n > rate then
      local wait = redis.call('PTTL', inrate)
      if wait <= 0 then
        wait = 1000
      end
      return { 2, tostring(wait), {} }
    end
  end
  local seq = redis.call('INCR', seq_key)
  redis.call('XADD', inbox, seq .. '-0',
    'from', ARGV[a + 1], 'to', ARGV[a + 2], 'client_msg_id', ARGV[a + 3], 'body', ARGV[a + 4],
    'msg_id', ARGV[a + 5], 'sent_at', ARGV[a + 6])
  local stored = seq .. '|' .. ARGV[a + 5] .. '|' .. ARGV[a + 6]
  redis.call('SET', dedup, stored, 'PX', ARGV[1])
  keep_alive(seq_key, inbox, epoch, held == 0)
  return { 0, stored, live_routes(routes) }
end

return each_item(#KEYS / 6, append, function(err)
  return { 4, err, {} }
end)
