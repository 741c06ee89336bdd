-- args: lease name, ttl seconds -> {0, 1} when this session holds the lease
-- now (taken or renewed), {0, 0} when another live session holds it.
local k = P .. ARGV[5]
local cur = redis.call("GET", k)
if cur and cur ~= SID then return {0, 0} end
redis.call("SET", k, SID, "EX", tonumber(ARGV[6]))
return {0, 1}
