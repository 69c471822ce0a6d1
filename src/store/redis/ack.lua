-- Moves a batch of enrolled devices' ack cursors forward (group commit), each never past its
-- user's last seq, marks each device seen, and trims each inbox below the lowest cursor of all
-- the user's devices, found in O(log n) in a sorted set. A device without a cursor is registered
-- at 0 or up_to, so trimming waits for it. Acks are taken in order; one that fails fails alone.
-- KEYS: 6 per ack, in ack order: 1 ack hash (device -> cursor), 2 seq counter, 3 inbox stream,
--       4 lowest-cursor sorted set (device by cursor), 5 devices sorted set (device by last
--       seen), 6 epoch
-- ARGV: 1 now (ms), 2 how long a device is kept unseen (ms), 3 how long the seq counter and
--       epoch outlive the last activity (ms), 4 TTL slack (ms, as append.lua's); then 4 per
--       ack: device, up_to, the cursor the session last stored, and the messages it sent the
--       device above that as "seq:msg_id,seq:msg_id,..." (may be empty)
-- Returns one reply per ack: { 0, the device's cursor }; { 5, seq } when the inbox was rolled
-- back under the device (see rolled_back; nothing is stored); or { 4, error }.

local keep = tonumber(ARGV[3])
local slack = tonumber(ARGV[4])
local ARGS_BEFORE = 4

-- The seq that shows the inbox was rolled back under the device, or nil: up_to past the last
-- seq; a cursor below the one the session stored (that write was lost); another message than
-- the one sent under a seq above the cursor.
local function rolled_back(inbox, last, up_to, cursor, a)
  if up_to > last then
    return up_to
  end
  local stored = tonumber(ARGV[a + 3])
  if cursor < stored then
    return stored
  end
  -- What was sent above the cursor, checked in one read of that stretch of the inbox.
  local sent, low, high = {}, nil, nil
  for seq, msg_id in string.gmatch(ARGV[a + 4], '(%d+):([^,]+)') do
    seq = tonumber(seq)
    if seq > cursor and seq <= up_to then
      sent[seq] = msg_id
      low = math.min(low or seq, seq)
      high = math.max(high or seq, seq)
    end
  end
  if not low then
    return nil
  end
  for _, e in ipairs(redis.call('XRANGE', inbox, low .. '-0', high .. '-0')) do
    local seq = tonumber(string.match(e[1], '^(%d+)'))
    local want = sent[seq]
    if want then
      local f = e[2]
      for j = 1, #f, 2 do
        if f[j] == 'msg_id' then
          if f[j + 1] ~= want then
            return seq
          end
          break
        end
      end
    end
  end
  return nil
end

local function ack(i)
  local k = (i - 1) * 6
  local a = ARGS_BEFORE + (i - 1) * 4
  local cursors, seq_key, inbox, low = KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], KEYS[k + 4]
  local devices, epoch = KEYS[k + 5], KEYS[k + 6]
  local device = ARGV[a + 1]
  -- The sorted set must hold every cursor of the hash: written before the set existed, or by a
  -- node of an older version during a rolling upgrade. Rebuilt when the counts differ.
  if redis.call('HLEN', cursors) ~= redis.call('ZCARD', low) then
    local flat = redis.call('HGETALL', cursors)
    redis.call('DEL', low)
    for j = 1, #flat, 2 do
      redis.call('ZADD', low, tonumber(flat[j + 1]), flat[j])
      redis.call('ZADD', devices, 'NX', tonumber(ARGV[1]), flat[j])
    end
  end
  local last = tonumber(redis.call('GET', seq_key) or '0')
  local up_to = tonumber(ARGV[a + 2])
  local target = math.min(up_to, last)
  if not redis.call('ZSCORE', devices, device) then
    -- Not (or no longer) one of the user's devices: it logged out, or was forgotten. Its ack
    -- stores nothing, so no cursor comes back to hold the inbox.
    return { 0, target }
  end
  local current = redis.call('HGET', cursors, device)
  local rolled = rolled_back(inbox, last, up_to, tonumber(current or '0'), a)
  if rolled then
    return { 5, rolled }
  end
  local cursor = target
  if current then
    cursor = math.max(tonumber(current), target)
  end
  if cursor ~= tonumber(current or '-1') then
    redis.call('HSET', cursors, device, cursor)
    redis.call('ZADD', low, cursor, device)
  end
  redis.call('ZADD', devices, ARGV[1], device)
  local lowest = redis.call('ZRANGE', low, 0, 0, 'WITHSCORES')
  if #lowest == 2 and tonumber(lowest[2]) > 0 then
    redis.call('XTRIM', inbox, 'MINID', (tonumber(lowest[2]) + 1) .. '-0')
  end
  -- A user whose devices all stay away this long leaves no cursors behind.
  redis.call('PEXPIRE', cursors, ARGV[2])
  redis.call('PEXPIRE', low, ARGV[2])
  redis.call('PEXPIRE', devices, ARGV[2])
  -- The counter and epoch outlive every cursor that refers to them, kept as append.lua keeps
  -- them.
  keep_counter(seq_key, epoch, keep, slack)
  return { 0, cursor }
end

return each_item(#KEYS / 6, ack, function(err)
  return { 4, err }
end)
