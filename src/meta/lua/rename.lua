-- args: parent, name, newparent, newname, flags (1 noreplace,
-- 2 exchange), expected dst ino (0: none), keep_open, sid -> {0, ino}
local sp, sn, dp, dn = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7]), ARGV[8]
local flags, want, keep_open, sid = tonumber(ARGV[9]), tonumber(ARGV[10]), tonumber(ARGV[11]), ARGV[12]
local se = redis.call("HGET", key("d", sp), sn)
if not se then return {ENOENT} end
local styp, sino = parse_entry(se)
local dpa = get_attr(dp)
if not dpa then return {ENOENT} end
if dpa.typ ~= T_DIR then return {ENOTDIR} end
local spa = dpa
if sp ~= dp then spa = get_attr(sp) end
-- Only the file system writes into the trash; files leave it by rename
-- (restore), the hour directories never do.
if is_trash_dir(dp, dpa) or sp == TRASH then return {EPERM} end
if bit.band(flags, 2) ~= 0 and is_trash_dir(sp, spa) then return {EPERM} end
local de = redis.call("HGET", key("d", dp), dn)
local dtyp, dino = nil, 0
if de then dtyp, dino = parse_entry(de) end
if dino ~= want then return {EAGAIN} end
if de and dino == sino then return {0, sino} end
-- a directory may not move into its own subtree
local function inside(dir, anc)
  local cur, guard = dir, 0
  while cur ~= 1 and guard < 10000 do
    if cur == anc then return true end
    local c = get_attr(cur)
    if not c then return false end
    cur = c.parent
    guard = guard + 1
  end
  return cur == anc
end
if styp == T_DIR and inside(dp, sino) then return {EINVAL} end
if de and dtyp == T_DIR and inside(sp, dino) then return {EINVAL} end
local sa = get_attr(sino)
if bit.band(flags, 2) ~= 0 then -- exchange
  if not de then return {ENOENT} end
  local da = get_attr(dino)
  redis.call("HSET", key("d", sp), sn, entry(dtyp, dino))
  redis.call("HSET", key("d", dp), dn, entry(styp, sino))
  if sp ~= dp then
    if styp == T_DIR and dtyp ~= T_DIR then spa.nlink = spa.nlink - 1; dpa.nlink = dpa.nlink + 1 end
    if dtyp == T_DIR and styp ~= T_DIR then dpa.nlink = dpa.nlink - 1; spa.nlink = spa.nlink + 1 end
    if sa and sa.parent ~= 0 then sa.parent = dp end
    if da and da.parent ~= 0 then da.parent = sp end
  end
  if sa then touch_c(sa); put_attr(sino, sa) end
  if da then touch_c(da); put_attr(dino, da) end
  touch_m(dpa); put_attr(dp, dpa)
  if sp ~= dp then touch_m(spa); put_attr(sp, spa) end
  notify_entry(sp, sn); notify_entry(dp, dn); notify_inode(sino); notify_inode(dino); notify_inode(sp); notify_inode(dp)
  return {0, sino}
end
if de then
  if bit.band(flags, 1) ~= 0 then return {EEXIST} end
  if styp == T_DIR and dtyp ~= T_DIR then return {ENOTDIR} end
  if styp ~= T_DIR and dtyp == T_DIR then return {EISDIR} end
  local da = get_attr(dino)
  if dtyp == T_DIR then
    if redis.call("HLEN", key("d", dino)) > 0 then return {ENOTEMPTY} end
    redis.call("DEL", key("i", dino), key("d", dino), key("x", dino))
    redis.call("DECR", P .. "totalInodes")
    used_delta(-4096)
    dpa.nlink = dpa.nlink - 1
  elseif da then
    da.nlink = da.nlink - 1
    touch_c(da)
    if da.nlink <= 0 then
      da.nlink = 0
      if not to_trash(dp, dpa, dn, dino, da) then drop_inode(dino, da, keep_open, sid) end
    else
      put_attr(dino, da)
    end
  end
end
redis.call("HDEL", key("d", sp), sn)
redis.call("HSET", key("d", dp), dn, entry(styp, sino))
if sa then
  if sp ~= dp then
    if styp == T_DIR then spa.nlink = spa.nlink - 1; dpa.nlink = dpa.nlink + 1 end
    if sa.parent ~= 0 then sa.parent = dp end
  end
  touch_c(sa)
  put_attr(sino, sa)
end
touch_m(dpa); put_attr(dp, dpa)
if sp ~= dp then touch_m(spa); put_attr(sp, spa) end
notify_entry(sp, sn)
notify_entry(dp, dn)
notify_inode(sino)
notify_inode(sp)
if sp ~= dp then notify_inode(dp) end
if dino ~= 0 then notify_inode(dino) end
return {0, sino}
