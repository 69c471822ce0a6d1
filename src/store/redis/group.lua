-- Changes a group (one call, atomic in the group's slot): checks the actor's role and the
-- member limit, changes the members, and logs the change as an event message in the group's
-- conversation, so members see it in order with the messages.
-- KEYS: 1 group hash (name, owner, created_at, history, ver), 2 members hash (user ->
--       role|joined conversation seq), 3 the conversation log, 4 the members' ids (sorted set,
--       score 0: GetGroup pages it by id)
-- ARGV: as message.lua says, for one message (the event: from = the actor; its group name
--       field the new name for create and rename, the role for role); then op (create, add,
--       remove, leave, rename, role), most members, history for new members (1/0), the
--       fan-out limit, then the users (role: the one user).
-- Returns { code, event conversation seq (0: nothing changed), members after the change (none
--   once the group broadcasts),
--   users removed, the event's kind, the users it names (space-separated), the seq the group
--   broadcasts from (0: it does not), the membership version }; code 0 done, 5 no such group or
--   the actor is not in it, 6 the actor's role does not allow it, 7 over the member limit, 8 the
--   group exists, 9 an owner may not leave. A group left with more members than the fan-out
--   limit broadcasts from this event on, for good.

local group, members, log, names = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local m = message(1)
local a = ARGS_BEFORE + ARGS_EACH
local op, most, history = ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
local fanout = tonumber(ARGV[a + 4])
local users, seen = {}, {}
for i = a + 5, #ARGV do
  if not seen[ARGV[i]] and ARGV[i] ~= m.from then
    seen[ARGV[i]] = true
    users[#users + 1] = ARGV[i]
  end
end

local function role(user)
  local v = redis.call('HGET', members, user)
  return v and string.match(v, '^(%a+)')
end

local function bcast()
  return tonumber(redis.call('HGET', group, 'bcast') or '0')
end

local function done(cseq, removed)
  local ver = redis.call('HINCRBY', group, 'ver', 1)
  if bcast() == 0 and redis.call('HLEN', members) > fanout then
    redis.call('HSET', group, 'bcast', cseq)
  end
  -- A broadcast group's members are not sent back: nothing is written per member.
  local list = {}
  if bcast() == 0 then
    list = redis.call('HKEYS', members)
  end
  return { 0, cseq, list, removed, m.ev, m.evusers, bcast(), ver }
end

local function refuse(code)
  return { code, 0, {}, {}, 0, '', 0, 0 }
end

local function log_event(kind, who)
  m.ev = kind
  m.evusers = table.concat(who, ' ')
  m.cseq = log_append(log, m)
  return m.cseq
end

if op == 'create' then
  if redis.call('EXISTS', group) == 1 then
    return refuse(8)
  end
  if #users + 1 > most then
    return refuse(7)
  end
  redis.call('HSET', group, 'name', m.evname, 'owner', m.from, 'created_at', m.sent_at,
    'history', history, 'ver', 0)
  -- The event names no one: a copy of it lands in every member's inbox, and the members are
  -- for GetGroup to page, not for each inbox to hold.
  local cseq = log_event(EVENT_CREATED, {})
  redis.call('HSET', members, m.from, 'owner|' .. cseq)
  redis.call('ZADD', names, 0, m.from)
  for _, u in ipairs(users) do
    redis.call('HSET', members, u, 'member|' .. cseq)
    redis.call('ZADD', names, 0, u)
  end
  return done(cseq, {})
end

local mine = role(m.from)
if not mine or redis.call('EXISTS', group) == 0 then
  return refuse(5)
end
if op == 'leave' then
  if mine == 'owner' then
    return refuse(9)
  end
  local cseq = log_event(EVENT_LEFT, { m.from })
  redis.call('HDEL', members, m.from)
  redis.call('ZREM', names, m.from)
  return done(cseq, { m.from })
end
if mine ~= 'owner' and mine ~= 'admin' then
  return refuse(6)
end
if op == 'rename' then
  redis.call('HSET', group, 'name', m.evname)
  return done(log_event(EVENT_RENAMED, {}), {})
end
if op == 'role' then
  local user = users[1]
  if mine ~= 'owner' then
    return refuse(6)
  end
  local theirs = user and redis.call('HGET', members, user)
  if not theirs then
    return refuse(5)
  end
  local cseq = log_event(EVENT_ROLE_CHANGED, { user })
  if m.evname == 'owner' then
    local own = redis.call('HGET', members, m.from)
    redis.call('HSET', members, m.from, 'admin|' .. string.match(own, '|(%d+)$'))
    redis.call('HSET', group, 'owner', user)
  end
  redis.call('HSET', members, user, m.evname .. '|' .. string.match(theirs, '|(%d+)$'))
  return done(cseq, {})
end
local changing = {}
for _, u in ipairs(users) do
  local theirs = role(u)
  if op == 'add' and not theirs then
    changing[#changing + 1] = u
  elseif op == 'remove' and theirs then
    -- The owner stays; an admin removes plain members only.
    if theirs == 'owner' or (mine == 'admin' and theirs ~= 'member') then
      return refuse(6)
    end
    changing[#changing + 1] = u
  end
end
if #changing == 0 then
  return { 0, 0, redis.call('HKEYS', members), {}, 0, '', bcast(),
    tonumber(redis.call('HGET', group, 'ver')) }
end
if op == 'add' then
  if redis.call('HLEN', members) + #changing > most then
    return refuse(7)
  end
  local cseq = log_event(EVENT_JOINED, changing)
  for _, u in ipairs(changing) do
    redis.call('HSET', members, u, 'member|' .. cseq)
    redis.call('ZADD', names, 0, u)
  end
  return done(cseq, {})
end
local cseq = log_event(EVENT_REMOVED, changing)
for _, u in ipairs(changing) do
  redis.call('HDEL', members, u)
  redis.call('ZREM', names, u)
end
return done(cseq, changing)
