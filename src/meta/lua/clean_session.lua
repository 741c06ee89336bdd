-- args: session id to clean, own (1 at the session's own clean unmount).
-- Other nodes clean a session only once its expiry passed by Redis' clock;
-- exactly one caller wins the ZREM, drops the session's unlinked-but-open
-- files and its locks.
local sid, own = ARGV[5], ARGV[6] == "1"
if not own then
  local expiry = redis.call("ZSCORE", P .. "sessions", sid)
  if not expiry or tonumber(expiry) >= tonumber(redis.call("TIME")[1]) then return {0, 0} end
end
if redis.call("ZREM", P .. "sessions", sid) == 0 then return {0, 0} end
local held = redis.call("SMEMBERS", P .. "sustained" .. sid)
for _, i in ipairs(held) do
  local ino = tonumber(i)
  local a = get_attr(ino)
  if a and a.nlink == 0 then drop_inode(ino, a, 0, sid) end
end
local locked = redis.call("SMEMBERS", P .. "locked" .. sid)
for _, i in ipairs(locked) do
  local k = key("lock", tonumber(i))
  for _, f in ipairs(redis.call("HKEYS", k)) do
    if string.sub(f, 1, #sid + 1) == sid .. "_" then redis.call("HDEL", k, f) end
  end
  notify_inode(tonumber(i))
end
redis.call("DEL", P .. "sustained" .. sid, P .. "locked" .. sid, P .. "session" .. sid)
return {0, 1}
