-- Drops entries past retention from the head of an inbox stream, at most ARGV[2] of them: what
-- a read skipped as expired is not scanned again.
-- KEYS: 1 inbox stream
-- ARGV: 1 retention cut-off (ms: entries sent before it are dropped), 2 most entries to look at
-- Returns how many entries were dropped.
return drop_expired(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
