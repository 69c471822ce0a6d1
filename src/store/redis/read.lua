-- Moves a reader's cursor in a conversation forward (never back).
-- KEYS: 1 the conversation's readers (sorted set: user -> conversation seq read up to)
-- ARGV: the user, the seq, the set's lifetime (ms)
redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
