-- Appends one message to a user's inbox, at most once per (sender, client_msg_id), and reads
-- the user's live routes: one atomic round trip per message.
-- KEYS: 1 seq counter, 2 inbox stream, 3 dedup key, 4 route hash, 5 inbox rate counter,
--       6 epoch
-- ARGV: 1 from, 2 to, 3 client_msg_id, 4 body, 5 msg_id, 6 sent_at (ms),
--       7 dedup ttl (ms), 8 now (ms), 9 retention cut-off (ms: older entries are dropped),
--       10 new messages the inbox takes per second (0: no limit), 11 most messages it holds,
--       12 how long the seq counter and epoch outlive the last activity (ms), 13 retention (ms)
-- Returns { duplicate (0|1), "seq|msg_id|sent_at", { device, route, device, route, ... } },
-- or { 2, ms until the inbox takes more, {} } when the inbox is over its rate, or
-- { 3, messages held, {} } when it is full (nothing written either way)

local function live_routes()
  local flat = redis.call('HGETALL', KEYS[4])
  local now = tonumber(ARGV[8])
  local live = {}
  for i = 1, #flat, 2 do
    local lapses = tonumber(string.match(flat[i + 1], '|(%d+)$'))
    if lapses and lapses > now then
      live[#live + 1] = flat[i]
      live[#live + 1] = flat[i + 1]
    else
      redis.call('HDEL', KEYS[4], flat[i])
    end
  end
  return live
end

local function sent_at(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'sent_at' then
      return tonumber(fields[i + 1])
    end
  end
  return nil
end

-- Drops entries past retention from the head of the stream, a bounded number per call.
local function trim_expired()
  local cut = tonumber(ARGV[9])
  local head = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #head == 0 or (sent_at(head[1]) or cut) >= cut then
    return
  end
  local last = nil
  for _, entry in ipairs(redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 100)) do
    if (sent_at(entry) or cut) >= cut then
      break
    end
    last = entry[1]
  end
  if last then
    local seq = tonumber(string.match(last, '^(%d+)'))
    redis.call('XTRIM', KEYS[2], 'MINID', (seq + 1) .. '-0')
  end
end

local dup = redis.call('GET', KEYS[3])
if dup then
  return { 1, dup, live_routes() }
end
-- Full: unread messages are never dropped to make room; the sender is told instead.
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[11]) then
  trim_expired()
  local held = redis.call('XLEN', KEYS[2])
  if held >= tonumber(ARGV[11]) then
    return { 3, tostring(held), {} }
  end
end
-- A fixed one-second window per inbox, shared by every node.
local rate = tonumber(ARGV[10])
if rate > 0 then
  local n = redis.call('INCR', KEYS[5])
  if n == 1 then
    redis.call('PEXPIRE', KEYS[5], 1000)
  end
  if n > rate then
    local wait = redis.call('PTTL', KEYS[5])
    if wait <= 0 then
      wait = 1000
    end
    return { 2, tostring(wait), {} }
  end
end
local seq = redis.call('INCR', KEYS[1])
redis.call('XADD', KEYS[2], seq .. '-0',
  'from', ARGV[1], 'to', ARGV[2], 'client_msg_id', ARGV[3], 'body', ARGV[4],
  'msg_id', ARGV[5], 'sent_at', ARGV[6])
local stored = seq .. '|' .. ARGV[5] .. '|' .. ARGV[6]
redis.call('SET', KEYS[3], stored, 'PX', ARGV[7])
trim_expired()
-- A user who never comes back leaves nothing: the inbox goes when its newest message passes
-- the retention, the counter and epoch after every cursor that could refer to them.
redis.call('PEXPIRE', KEYS[2], ARGV[13])
redis.call('PEXPIRE', KEYS[1], ARGV[12])
redis.call('PEXPIRE', KEYS[6], ARGV[12])
return { 0, stored, live_routes() }
