-- args: zset name, grace seconds, lease seconds, limit: claims up to `limit`
-- members whose grace period ended, by moving their score `lease` seconds
-- past the due line -> {0, {members}}. Another node sees them again only if
-- this one neither finishes (ZREM) nor releases them within the lease.
local z = P .. ARGV[5]
local cutoff = NOW - tonumber(ARGV[6])
local got = redis.call("ZRANGEBYSCORE", z, "-inf", cutoff, "LIMIT", 0, tonumber(ARGV[8]))
local later = cutoff + tonumber(ARGV[7])
for _, m in ipairs(got) do redis.call("ZADD", z, later, m) end
return {0, got}
