-- no args -> {0, {session ids whose expiry passed by Redis' clock}}
local now = tonumber(redis.call("TIME")[1])
return {0, redis.call("ZRANGEBYSCORE", P .. "sessions", "-inf", "(" .. now)}
