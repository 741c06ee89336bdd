-- args: zset name, grace seconds, delay seconds, members: gives claimed
-- members back, due again in `delay` seconds (a failed deletion is retried
-- by any node, without spinning on it). Members finished meanwhile stay gone.
local z = P .. ARGV[5]
local at = NOW - tonumber(ARGV[6]) + tonumber(ARGV[7])
for j = 8, #ARGV do redis.call("ZADD", z, "XX", at, ARGV[j]) end
return {0}
