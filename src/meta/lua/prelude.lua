-- Shared by every script. ARGV[1] is the volume's key prefix ("{name}"),
-- ARGV[2..3] the caller's clock (seconds, nanoseconds), ARGV[4] the caller's
-- session id; each script's own arguments start at ARGV[5]. Scripts return
-- {0, ...} on success or {errno} on failure. Attributes are packed as in
-- src/meta/attr.rs (72 bytes, little endian).
local P = ARGV[1]
local NOW, NOWNS = tonumber(ARGV[2]), tonumber(ARGV[3])
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
