-- args: parent, name, expected ino, keep_open, sid -> {0, nlink} (a file
-- moved into the trash answers nlink 1: it lives on there)
local parent, name, want = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local keep_open, sid = tonumber(ARGV[8]), ARGV[9]
local e = redis.call("HGET", key("d", parent), name)
if not e then return {ENOENT} end
local typ, ino = parse_entry(e)
if ino ~= want then return {EAGAIN} end
if typ == T_DIR then return {EISDIR} end
local pa = get_attr(parent)
local a = get_attr(ino)
redis.call("HDEL", key("d", parent), name)
if pa then touch_m(pa); put_attr(parent, pa) end
notify_entry(parent, name)
notify_inode(parent)
notify_inode(ino)
if not a then return {0, 0} end
a.nlink = a.nlink - 1
touch_c(a)
if a.nlink <= 0 then
  a.nlink = 0
  if to_trash(parent, pa, name, ino, a) then return {0, 1} end
  drop_inode(ino, a, keep_open, sid)
else
  put_attr(ino, a)
end
return {0, a.nlink}
