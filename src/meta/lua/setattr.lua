-- args: ino, mask (1 mode, 2 uid, 4 gid, 8 atime, 16 atime=now, 32 mtime,
-- 64 mtime=now, 128 ctime), mode, uid, gid, atime s/ns, mtime s/ns, ctime s/ns -> {0, attr}
local ino, mask = tonumber(ARGV[5]), tonumber(ARGV[6])
local a = get_attr(ino)
if not a then return {ENOENT} end
if trashed(ino, a) then return {EPERM} end
local function has(b) return bit.band(mask, b) ~= 0 end
if has(1) then a.mode = bit.band(tonumber(ARGV[7]), 4095) end
if has(2) then a.uid = tonumber(ARGV[8]) end
if has(4) then a.gid = tonumber(ARGV[9]) end
if has(8) then a.atime, a.atimens = tonumber(ARGV[10]), tonumber(ARGV[11]) end
if has(16) then a.atime, a.atimens = NOW, NOWNS end
if has(32) then a.mtime, a.mtimens = tonumber(ARGV[12]), tonumber(ARGV[13]) end
if has(64) then a.mtime, a.mtimens = NOW, NOWNS end
touch_c(a)
if has(128) then a.ctime, a.ctimens = tonumber(ARGV[14]), tonumber(ARGV[15]) end
notify_inode(ino)
return {0, put_attr(ino, a)}
