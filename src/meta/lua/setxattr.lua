-- args: ino, name, value, flags (1 create, 2 replace) -> {0}
local ino, name, value, flags = tonumber(ARGV[5]), ARGV[6], ARGV[7], tonumber(ARGV[8])
if redis.call("EXISTS", key("i", ino)) == 0 then return {ENOENT} end
local exists = redis.call("HEXISTS", key("x", ino), name) == 1
if flags == 1 and exists then return {EEXIST} end
if flags == 2 and not exists then return {ENODATA} end
redis.call("HSET", key("x", ino), name, value)
local a = get_attr(ino)
touch_c(a)
put_attr(ino, a)
notify_inode(ino)
return {0}
