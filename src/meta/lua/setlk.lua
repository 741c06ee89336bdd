-- args: ino, owner, type (0 read, 1 write, 2 unlock), start, end, pid -> {0}
-- Byte-range locks of one inode live in one hash: field "<sid>_<owner>",
-- value a list of 21-byte records (type, start, end, pid). A lock conflicts
-- with another owner's overlapping lock when either of them is a write lock.
local ino, owner, typ = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local s, e, pid = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local k = key("lock", ino)
local me = SID .. "_" .. owner
-- A session past its expiry (by Redis' clock) may be cleaned any moment:
-- a lock recorded under it now would outlive the cleanup.
if typ ~= 2 and SID ~= "0" then
  local expiry = redis.call("ZSCORE", P .. "sessions", SID)
  if not expiry or tonumber(expiry) < tonumber(redis.call("TIME")[1]) then return {37} end
end
local RFMT = "<BI8I8I4"
local function records(v)
  local out, pos = {}, 1
  while v and pos + 20 <= #v do
    local t, rs, re, rp = struct.unpack(RFMT, v, pos)
    out[#out + 1] = {t = t, s = rs, e = re, p = rp}
    pos = pos + 21
  end
  return out
end
if typ ~= 2 then
  local all = redis.call("HGETALL", k)
  for i = 1, #all, 2 do
    if all[i] ~= me then
      for _, r in ipairs(records(all[i + 1])) do
        if r.s <= e and s <= r.e and (typ == 1 or r.t == 1) then return {EAGAIN} end
      end
    end
  end
end
local keep = {}
for _, r in ipairs(records(redis.call("HGET", k, me))) do
  if r.e < s or r.s > e then
    keep[#keep + 1] = r
  else
    if r.s < s then keep[#keep + 1] = {t = r.t, s = r.s, e = s - 1, p = r.p} end
    if r.e > e then keep[#keep + 1] = {t = r.t, s = e + 1, e = r.e, p = r.p} end
  end
end
if typ ~= 2 then keep[#keep + 1] = {t = typ, s = s, e = e, p = pid} end
if #keep == 0 then
  redis.call("HDEL", k, me)
else
  local parts = {}
  for i, r in ipairs(keep) do parts[i] = struct.pack(RFMT, r.t, r.s, r.e, r.p) end
  redis.call("HSET", k, me, table.concat(parts))
  redis.call("SADD", P .. "locked" .. SID, string.format("%d", ino))
end
return {0}
