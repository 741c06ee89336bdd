-- args: session id, seconds to live, session info (JSON), create (1/0)
-- -> {0, redis time, expiry} or {ENOENT} when the session is gone (another
-- node cleaned it after it expired: it must never be revived).
-- Expiry is measured by Redis' clock, so nodes' clocks do not matter.
local sid, ttl, create = ARGV[5], tonumber(ARGV[6]), ARGV[8] == "1"
local now = tonumber(redis.call("TIME")[1])
if not create and not redis.call("ZSCORE", P .. "sessions", sid) then return {ENOENT} end
redis.call("ZADD", P .. "sessions", now + ttl, sid)
redis.call("SET", P .. "session" .. sid, ARGV[7])
return {0, now, now + ttl}
