-- args: zset name, member, lease seconds: one node wins a cleanup job.
local z = P .. ARGV[5]
local score = redis.call("ZSCORE", z, ARGV[6])
if not score or tonumber(score) > NOW then return {0, 0} end
redis.call("ZADD", z, NOW + tonumber(ARGV[7]), ARGV[6])
return {0, 1}
