-- Shared by every script. ARGV[1] is the volume's key prefix ("{name}"),
-- ARGV[2..3] the caller's clock (seconds, nanoseconds; unused, see NOW),
-- ARGV[4] the caller's session id; each script's own arguments start at
-- ARGV[5]. Scripts return {0, ...} on success or {errno} on failure.
-- Attributes are packed as in src/meta/attr.rs (72 bytes, little endian).
-- KEYS (Redis Cluster): every script is called with at least one key of
-- the volume, KEYS[1] = P .. "setting" (marked scripts add their markers),
-- which routes the call to the node owning the volume's slot. The other
-- keys are computed here from P and the arguments (inodes, directories,
-- chunk lists "c<ino>_<indx>", counters, session keys) and cannot all be
-- declared up front; each starts with P = "{NAME}", the volume's hash tag,
-- so all are in the same slot, which a cluster allows. Never touch a key
-- that does not start with P.
local P = ARGV[1]
-- Every time a script stores (file times, deletion due times, trash hours)
-- is the Redis server's: a node whose clock is off would otherwise date
-- deletions in the past (another node's deleter frees objects readers may
-- still need) or the future. Scripts replicate by effects, so TIME is safe.
local NOW, NOWNS
do
  local t = redis.call("TIME")
  NOW, NOWNS = tonumber(t[1]), tonumber(t[2]) * 1000
end
local SID = ARGV[4]
local AFMT = "<BBHI4I4i8I4i8I4i8I4I4I8I4I8"
local CHUNK = 67108864
local T_FILE, T_DIR, T_SYMLINK = 1, 2, 3
local ENODEV = 19
local ENOENT, EEXIST, ENOTDIR, EISDIR, EINVAL, ENOSPC, ENOTEMPTY, EPERM, ENODATA, EAGAIN, EOPNOTSUPP =
  2, 17, 20, 21, 22, 28, 39, 1, 61, 11, 95
local function key(kind, ino) return P .. kind .. string.format("%d", ino) end
local function get_attr(ino)
  local s = redis.call("GET", key("i", ino))
  if not s then return nil end
  local a = {}
  a.flags, a.typ, a.mode, a.uid, a.gid, a.atime, a.atimens, a.mtime, a.mtimens,
    a.ctime, a.ctimens, a.nlink, a.length, a.rdev, a.parent = struct.unpack(AFMT, s)
  return a
end
local function pack_attr(a)
  return struct.pack(AFMT, a.flags, a.typ, a.mode, a.uid, a.gid, a.atime, a.atimens,
    a.mtime, a.mtimens, a.ctime, a.ctimens, a.nlink, a.length, a.rdev, a.parent)
end
local function put_attr(ino, a)
  local s = pack_attr(a)
  redis.call("SET", key("i", ino), s)
  return s
end
local function touch_m(a) a.mtime, a.mtimens, a.ctime, a.ctimens = NOW, NOWNS, NOW, NOWNS end
local function touch_c(a) a.ctime, a.ctimens = NOW, NOWNS end
local function entry(typ, ino) return struct.pack("<BI8", typ, ino) end
local function parse_entry(s) local t, i = struct.unpack("<BI8", s); return t, i end
local function space(len) return math.floor((len + 4095) / 4096) * 4096 end
local function used_delta(d) if d ~= 0 then redis.call("INCRBY", P .. "usedSpace", d) end end
local function check_space(delta, cap)
  if cap > 0 and delta > 0 then
    local used = tonumber(redis.call("GET", P .. "usedSpace") or "0")
    if used + delta > cap then return false end
  end
  return true
end
-- Removes an inode whose last link is gone. Regular files keep their chunks
-- until the background deleter frees them (journaled in delfiles).
local function drop_inode(ino, a, keep_open, sid)
  if keep_open == 1 and a.typ == T_FILE then
    redis.call("SADD", P .. "sustained" .. sid, string.format("%d", ino))
    put_attr(ino, a)
    return
  end
  redis.call("DEL", key("i", ino), key("x", ino))
  if a.typ == T_SYMLINK then redis.call("DEL", key("s", ino)) end
  if a.typ == T_FILE and a.length > 0 then
    redis.call("ZADD", P .. "delfiles", NOW, string.format("%d:%d", ino, a.length))
  end
  redis.call("DECR", P .. "totalInodes")
  used_delta(-space(a.length))
end
-- Tells other nodes what changed, so they can drop kernel caches at once.
-- kind: 1 entry (parent, name), 2 inode (ino).
local function notify_entry(parent, name)
  redis.call("PUBLISH", P .. "events", struct.pack("<BI8I8", 1, parent, 0) .. SID .. "/" .. name)
end
local function notify_inode(ino)
  redis.call("PUBLISH", P .. "events", struct.pack("<BI8I8", 2, 0, ino) .. SID .. "/")
end
-- Drops the records of chunk list `ck` that later records hide completely
-- (journaling their objects for deferred deletion: readers elsewhere may
-- still hold the old list) and returns how many records the chunk keeps.
local SLICE = "<I4I8I4I4I4"
-- The pending-upload journal of session `sid`: slice id -> bytes uploaded
-- (the end of its furthest block), written before each block upload.
local function uploads_key(sid) return P .. "uploads" .. sid end
-- Hands journaled slice `id` (of `size` bytes) to the deleter.
local function orphan_slice(id, size)
  redis.call("ZADD", P .. "delslices", NOW, struct.pack(SLICE, 0, id, size, 0, size))
end
-- Records prune_chunk journaled, so the writer can drop their cached blocks.
local DROPPED = {}
local function prune_chunk(ck)
  local recs = redis.call("LRANGE", ck, 0, -1)
  if #recs < 2 then return #recs end
  local cov, keep, hidden_recs = {}, {}, {}
  for j = #recs, 1, -1 do
    local pos, _, _, _, len = struct.unpack(SLICE, recs[j])
    local s, e = pos, pos + len
    local hidden = false
    for _, iv in ipairs(cov) do
      if iv[1] <= s and e <= iv[2] then hidden = true; break end
    end
    if hidden then
      hidden_recs[#hidden_recs + 1] = recs[j]
    else
      keep[#keep + 1] = recs[j]
      local merged = {}
      for _, iv in ipairs(cov) do
        if iv[2] < s or iv[1] > e then merged[#merged + 1] = iv
        else s, e = math.min(s, iv[1]), math.max(e, iv[2]) end
      end
      merged[#merged + 1] = {s, e}
      cov = merged
    end
  end
  if #hidden_recs > 0 then
    -- A slice still named by a kept record (a duplicate) keeps its objects.
    local live = {}
    for _, r in ipairs(keep) do
      local _, id = struct.unpack(SLICE, r)
      live[id] = true
    end
    for _, r in ipairs(hidden_recs) do
      local _, id = struct.unpack(SLICE, r)
      if id ~= 0 and not live[id] then
        redis.call("ZADD", P .. "delslices", NOW, r)
        DROPPED[#DROPPED + 1] = r
      end
    end
    redis.call("DEL", ck)
    -- keep is newest first; push in batches (Lua's unpack has a stack limit)
    local batch = {}
    for j = #keep, 1, -1 do
      batch[#batch + 1] = keep[j]
      if #batch == 1000 then redis.call("RPUSH", ck, unpack(batch)); batch = {} end
    end
    if #batch > 0 then redis.call("RPUSH", ck, unpack(batch)) end
  end
  return #keep
end
-- The trash (src/trash.rs): with trash days set, a regular file losing its
-- last name moves, in the same script, to .trash/<YYYY-MM-DD-HH>/ as
-- "<parent>-<ino>-<name>" instead of being freed. TRASH is a reserved inode
-- (meta::TRASH_INO), just below 2^52: exact in Lua's doubles, far above the
-- inode counter.
local TRASH = 4503599627370494
local function trash_days()
  local s = redis.call("GET", P .. "setting")
  if not s then return 0 end
  local ok, f = pcall(cjson.decode, s)
  if not ok or type(f) ~= "table" then return 0 end
  return tonumber(f.trash_days) or 0
end
-- Directory `ino` (attributes `a`) is the trash or one of its hour dirs.
local function is_trash_dir(ino, a)
  return ino == TRASH or (a ~= nil and a.parent == TRASH)
end
-- Inode `ino` (attributes `a`) lives in the trash: read-only.
local function trashed(ino, a)
  if ino == TRASH or a.parent == TRASH then return true end
  if a.typ ~= T_FILE or a.parent == 0 then return false end
  local pa = get_attr(a.parent)
  return pa ~= nil and pa.parent == TRASH
end
-- "YYYY-MM-DD-HH" (UTC) of epoch second t (days-from-civil inverted).
local function hour_name(t)
  local days = math.floor(t / 86400)
  local hour = math.floor((t - days * 86400) / 3600)
  local z = days + 719468
  local era = math.floor(z / 146097)
  local doe = z - era * 146097
  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524) - math.floor(doe / 146096)) / 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
  local mp = math.floor((5 * doy + 2) / 153)
  local d = doy - math.floor((153 * mp + 2) / 5) + 1
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return string.format("%04d-%02d-%02d-%02d", y, m, d, hour)
end
-- A directory of the trash (mode 0555, root's): counted like any directory.
local function new_trash_dir(ino, parent)
  put_attr(ino, {flags = 0, typ = T_DIR, mode = 365, uid = 0, gid = 0, atime = NOW, atimens = NOWNS,
    mtime = NOW, mtimens = NOWNS, ctime = NOW, ctimens = NOWNS, nlink = 2, length = 4096, rdev = 0,
    parent = parent})
  redis.call("INCR", P .. "totalInodes")
  used_delta(4096)
end
-- The hour directory of now, made (with the trash itself) on first use.
-- Its inode comes from the same counter as every other inode.
local function trash_hour_dir()
  if redis.call("EXISTS", key("i", TRASH)) == 0 then new_trash_dir(TRASH, 1) end
  local name = hour_name(NOW)
  local e = redis.call("HGET", key("d", TRASH), name)
  if e then
    local _, ino = parse_entry(e)
    return ino
  end
  local ino = redis.call("INCR", P .. "nextinode")
  new_trash_dir(ino, TRASH)
  redis.call("HSET", key("d", TRASH), name, entry(T_DIR, ino))
  local ta = get_attr(TRASH)
  ta.nlink = ta.nlink + 1
  touch_m(ta)
  put_attr(TRASH, ta)
  return ino
end
-- File `ino` (attributes `a`, nlink already down to 0) just lost its last
-- name `name` in directory `parent` (attributes `pa`). Moves it into the
-- trash when the volume keeps one and it is not in the trash already; its
-- space and inode stay counted until the purge. false: the caller frees it.
local function to_trash(parent, pa, name, ino, a)
  if a.typ ~= T_FILE or is_trash_dir(parent, pa) or trash_days() <= 0 then return false end
  local hour = trash_hour_dir()
  local tname = string.format("%d-%d-", parent, ino) .. name
  if #tname > 255 then tname = string.sub(tname, 1, 255) end
  a.nlink = 1
  a.parent = hour
  touch_c(a)
  put_attr(ino, a)
  redis.call("HSET", key("d", hour), tname, entry(T_FILE, ino))
  notify_entry(hour, tname)
  return true
end
