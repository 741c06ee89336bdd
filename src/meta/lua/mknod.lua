-- args: parent, name, new ino, type, mode, umask, uid, gid,
-- rdev, symlink target, inode limit, capacity -> {0, attr}
local parent, name, ino, typ = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), tonumber(ARGV[8])
local mode, umask = tonumber(ARGV[9]), tonumber(ARGV[10])
local uid, gid, rdev, target = tonumber(ARGV[11]), tonumber(ARGV[12]), tonumber(ARGV[13]), ARGV[14]
local max_inodes, cap = tonumber(ARGV[15]), tonumber(ARGV[16])
local pa = get_attr(parent)
if not pa then return {ENOENT} end
if pa.typ ~= T_DIR then return {ENOTDIR} end
if pa.nlink == 0 then return {ENOENT} end
if is_trash_dir(parent, pa) then return {EPERM} end
if redis.call("HEXISTS", key("d", parent), name) == 1 then return {EEXIST} end
if max_inodes > 0 and tonumber(redis.call("GET", P .. "totalInodes") or "0") >= max_inodes then
  return {ENOSPC}
end
local length = 0
if typ == T_DIR then length = 4096 elseif typ == T_SYMLINK then length = #target end
if not check_space(space(length), cap) then return {ENOSPC} end
mode = bit.band(mode, bit.bnot(umask))
if bit.band(pa.mode, 1024) ~= 0 then -- setgid directory: children inherit its group
  gid = pa.gid
  if typ == T_DIR then mode = bit.bor(mode, 1024) end
end
local a = {flags = 0, typ = typ, mode = bit.band(mode, 4095), uid = uid, gid = gid,
  atime = NOW, atimens = NOWNS, mtime = NOW, mtimens = NOWNS, ctime = NOW, ctimens = NOWNS,
  nlink = 1, length = length, rdev = rdev, parent = parent}
if typ == T_DIR then
  a.nlink = 2
  pa.nlink = pa.nlink + 1
end
redis.call("HSET", key("d", parent), name, entry(typ, ino))
if typ == T_SYMLINK then redis.call("SET", key("s", ino), target) end
touch_m(pa)
put_attr(parent, pa)
local s = put_attr(ino, a)
redis.call("INCR", P .. "totalInodes")
used_delta(space(length))
notify_entry(parent, name)
notify_inode(parent)
return {0, s}
