-- ARGV[4] ino, 5 mask (1 mode, 2 uid, 4 gid, 8 atime, 16 atime=now, 32 mtime,
-- 64 mtime=now, 128 ctime), 6 mode, 7 uid, 8 gid, 9/10 atime, 11/12 mtime, 13/14 ctime -> {0, attr}
local ino, mask = tonumber(ARGV[4]), tonumber(ARGV[5])
local a = get_attr(ino)
if not a then return {ENOENT} end
local function has(b) return bit.band(mask, b) ~= 0 end
if has(1) then a.mode = bit.band(tonumber(ARGV[6]), 4095) end
if has(2) then a.uid = tonumber(ARGV[7]) end
if has(4) then a.gid = tonumber(ARGV[8]) end
if has(8) then a.atime, a.atimens = tonumber(ARGV[9]), tonumber(ARGV[10]) end
if has(16) then a.atime, a.atimens = NOW, NOWNS end
if has(32) then a.mtime, a.mtimens = tonumber(ARGV[11]), tonumber(ARGV[12]) end
if has(64) then a.mtime, a.mtimens = NOW, NOWNS end
touch_c(a)
if has(128) then a.ctime, a.ctimens = tonumber(ARGV[13]), tonumber(ARGV[14]) end
return {0, put_attr(ino, a)}
