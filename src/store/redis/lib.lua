-- Helpers shared by the batch scripts and trim.lua: mod.rs puts this file before each of them
-- (Redis runs one chunk per script, so they cannot load it themselves).

-- Runs one(i) for items 1..n, in order, each in pcall, so that an item that fails (a Redis
-- error such as WRONGTYPE, or a Lua one) fails alone: its reply is failed(error). Returns the
-- replies in item order.
local function each_item(n, one, failed)
  local replies = {}
  for i = 1, n do
    local ok, reply = pcall(one, i)
    if not ok then
      -- redis.call raises a table { err = ... } for a Redis error, a string for a Lua one.
      if type(reply) == 'table' then
        reply = reply.err or 'script error'
      end
      reply = failed(tostring(reply))
    end
    replies[i] = reply
  end
  return replies
end

-- Keeps a user's seq counter and epoch TTLs within [keep, keep + slack]: sets both to
-- keep + slack when the counter's TTL has left that window (slack has passed, or another
-- script or a changed config set it), so they are written at most once per slack. Returns
-- whether it set them.
local function keep_counter(seq_key, epoch, keep, slack)
  local ttl = redis.call('PTTL', seq_key)
  if ttl >= keep and ttl <= keep + slack then
    return false
  end
  redis.call('PEXPIRE', seq_key, keep + slack)
  redis.call('PEXPIRE', epoch, keep + slack)
  return true
end

-- The sent_at field (ms) of an inbox stream entry, if it has one.
local function sent_at(entry)
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if fields[i] == 'sent_at' then
      return tonumber(fields[i + 1])
    end
  end
  return nil
end

-- Drops the entries sent before cut (ms) from the head of a stream (an inbox or a conversation
-- log), looking at `most` of them at the most. Returns how many it dropped.
local function drop_expired(inbox, cut, most)
  local last = nil
  local dropped = 0
  for _, entry in ipairs(redis.call('XRANGE', inbox, '-', '+', 'COUNT', most)) do
    if (sent_at(entry) or cut) >= cut then
      break
    end
    last = entry[1]
    dropped = dropped + 1
  end
  if last then
    -- Inbox ids are <seq>-0, log ids 0-<conversation seq>: the id just after the last dropped.
    local ms, n = string.match(last, '^(%d+)-(%d+)$')
    redis.call('XTRIM', inbox, 'MINID', ms .. '-' .. (tonumber(n) + 1))
  end
  return dropped
end

