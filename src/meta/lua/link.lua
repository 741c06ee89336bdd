-- args: ino, newparent, newname -> {0, attr}
local ino, np, nn = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local a = get_attr(ino)
if not a then return {ENOENT} end
if a.typ == T_DIR then return {EPERM} end
local pa = get_attr(np)
if not pa then return {ENOENT} end
if pa.typ ~= T_DIR then return {ENOTDIR} end
if is_trash_dir(np, pa) then return {EPERM} end
if redis.call("HEXISTS", key("d", np), nn) == 1 then return {EEXIST} end
redis.call("HSET", key("d", np), nn, entry(a.typ, ino))
a.nlink = a.nlink + 1
a.parent = 0
touch_c(a)
touch_m(pa)
put_attr(np, pa)
notify_entry(np, nn)
notify_inode(np)
notify_inode(ino)
return {0, put_attr(ino, a)}
