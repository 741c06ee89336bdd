-- args: parent, name -> {0}
local parent, name = tonumber(ARGV[5]), ARGV[6]
local e = redis.call("HGET", key("d", parent), name)
if not e then return {ENOENT} end
local typ, ino = parse_entry(e)
if typ ~= T_DIR then return {ENOTDIR} end
if redis.call("HLEN", key("d", ino)) > 0 then return {ENOTEMPTY} end
local pa = get_attr(parent)
redis.call("HDEL", key("d", parent), name)
redis.call("DEL", key("i", ino), key("d", ino), key("x", ino))
if pa then
  pa.nlink = pa.nlink - 1
  touch_m(pa)
  put_attr(parent, pa)
end
redis.call("DECR", P .. "totalInodes")
used_delta(-4096)
notify_entry(parent, name)
notify_inode(parent)
return {0}
