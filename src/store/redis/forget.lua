-- Forgets a device (it logged out): its cursor and last-seen time go, freeing its place.
-- KEYS: 1 ack hash, 2 lowest-cursor sorted set, 3 devices sorted set
-- ARGV: 1 device
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return 1
