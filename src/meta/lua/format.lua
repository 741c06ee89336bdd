-- args: setting JSON, root mode, root uid, root gid: writes the volume
-- record; a new volume also gets its root inode (an existing root is kept).
local cur = redis.call("GET", P .. "setting")
redis.call("SET", P .. "setting", ARGV[5])
if not cur then
  local mode, uid, gid = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
  local root = {flags = 0, typ = T_DIR, mode = mode, uid = uid, gid = gid, atime = NOW, atimens = NOWNS,
    mtime = NOW, mtimens = NOWNS, ctime = NOW, ctimens = NOWNS, nlink = 2, length = 4096, rdev = 0, parent = 1}
  if redis.call("EXISTS", key("i", 1)) == 0 then
    put_attr(1, root)
    redis.call("SET", P .. "totalInodes", 1)
    redis.call("SET", P .. "usedSpace", 4096)
  end
  redis.call("SETNX", P .. "nextinode", 1)
  redis.call("SETNX", P .. "nextslice", 0)
end
return {0}
