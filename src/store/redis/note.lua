-- Records a user's activity in their conversations (ListConversations' index).
-- KEYS: 1 the index of direct conversations (sorted set: conversation -> last activity, Unix
--       ms), 2 what was seen (hash: conversation -> highest conversation seq sent or read)
-- ARGV: the most conversations kept, both keys' lifetime (ms), then triples of a conversation,
--       its activity time and its seen seq (0: nothing seen).
local index, seen = KEYS[1], KEYS[2]
for i = 3, #ARGV, 3 do
  local conv, at, seq = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if string.sub(conv, 1, 2) == 'd:' then
    redis.call('ZADD', index, 'GT', at, conv)
  end
  if seq > 0 and seq > tonumber(redis.call('HGET', seen, conv) or '0') then
    redis.call('HSET', seen, conv, seq)
  end
end
local over = redis.call('ZCARD', index) - tonumber(ARGV[1])
if over > 0 then
  local gone = redis.call('ZRANGE', index, 0, over - 1)
  redis.call('ZREMRANGEBYRANK', index, 0, over - 1)
  redis.call('HDEL', seen, unpack(gone))
end
redis.call('PEXPIRE', index, ARGV[2])
redis.call('PEXPIRE', seen, ARGV[2])
return 0
