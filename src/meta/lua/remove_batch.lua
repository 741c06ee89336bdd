-- args: parent, purge (1: purging the trash; 0: `vecfs rmr`, which honours
-- the trash), ctime cutoff (purge: files whose ctime, the time they entered
-- the trash, is later stay), then pairs of name, expected ino.
-- Removes each entry that still names the expected inode: files lose a
-- link (the last one sends them to the trash or to the deleter),
-- directories go only when empty (rmr empties them bottom-up first).
-- Every removal is published, so other nodes drop their kernel dentries.
-- -> {0, files removed, directories removed, entries skipped}
local parent, purge, cutoff = tonumber(ARGV[5]), ARGV[6] == "1", tonumber(ARGV[7])
local pa = get_attr(parent)
if not pa then return {ENOENT} end
if pa.typ ~= T_DIR then return {ENOTDIR} end
if not purge and is_trash_dir(parent, pa) then return {EPERM} end
local files, dirs, skipped = 0, 0, 0
for j = 8, #ARGV - 1, 2 do
  local name, want = ARGV[j], tonumber(ARGV[j + 1])
  local e = redis.call("HGET", key("d", parent), name)
  local done = false
  if e then
    local typ, ino = parse_entry(e)
    if ino == want then
      local a = get_attr(ino)
      if typ == T_DIR then
        if redis.call("HLEN", key("d", ino)) == 0 then
          redis.call("HDEL", key("d", parent), name)
          redis.call("DEL", key("i", ino), key("d", ino), key("x", ino))
          pa.nlink = pa.nlink - 1
          redis.call("DECR", P .. "totalInodes")
          used_delta(-4096)
          dirs = dirs + 1
          done = true
        end
      elseif not a then
        redis.call("HDEL", key("d", parent), name)
        done = true
      elseif not (purge and a.ctime > cutoff) then
        redis.call("HDEL", key("d", parent), name)
        a.nlink = a.nlink - 1
        touch_c(a)
        if a.nlink <= 0 then
          a.nlink = 0
          if purge or not to_trash(parent, pa, name, ino, a) then drop_inode(ino, a, 0, SID) end
        else
          put_attr(ino, a)
        end
        files = files + 1
        done = true
      end
    end
  end
  if done then notify_entry(parent, name) else skipped = skipped + 1 end
end
if files + dirs > 0 then
  touch_m(pa)
  put_attr(parent, pa)
  notify_inode(parent)
end
return {0, files, dirs, skipped}
