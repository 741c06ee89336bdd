-- args: ino, sid: the last local handle of an unlinked file closed.
local ino, sid = tonumber(ARGV[5]), ARGV[6]
redis.call("SREM", P .. "sustained" .. sid, string.format("%d", ino))
local a = get_attr(ino)
if a and a.nlink == 0 then drop_inode(ino, a, 0, sid) end
return {0}
