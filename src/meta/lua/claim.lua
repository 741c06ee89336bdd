-- ARGV[4] zset name, 5 member, 6 lease seconds: one node wins a cleanup job.
local z = P .. ARGV[4]
local score = redis.call("ZSCORE", z, ARGV[5])
if not score or tonumber(score) > NOW then return {0, 0} end
redis.call("ZADD", z, NOW + tonumber(ARGV[6]), ARGV[5])
return {0, 1}
