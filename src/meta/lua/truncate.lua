-- args: ino, new length, capacity -> {0, attr, records dropped...} (the
-- caller drops the dropped slices' blocks from its cache: they wait the
-- trash days for the deleter but are never read again)
-- Shrinking drops whole chunks past the end (their slices journaled for
-- deletion) and covers the cut part of the last chunk with a hole slice, so
-- a later extension reads zeros.
local ino, newlen, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local a = get_attr(ino)
if not a then return {ENOENT} end
if trashed(ino, a) then return {EPERM} end
if a.typ == T_DIR then return {EISDIR} end
if a.typ ~= T_FILE then return {EINVAL} end
local old = a.length
local dropped = {}
if newlen > old and not check_space(space(newlen) - space(old), cap) then return {ENOSPC} end
if newlen < old then
  local first = math.floor(newlen / CHUNK)
  local last = math.floor((old - 1) / CHUNK)
  for indx = first, last do
    local ck = key("c", ino) .. "_" .. string.format("%d", indx)
    local cstart = indx * CHUNK
    if cstart >= newlen then
      local sl = redis.call("LRANGE", ck, 0, -1)
      for _, s in ipairs(sl) do
        local _, id = struct.unpack("<I4I8", s)
        if id ~= 0 then
          redis.call("ZADD", P .. "delslices", NOW, s)
          dropped[#dropped + 1] = s
        end
      end
      redis.call("DEL", ck)
    else
      local pos = newlen - cstart
      local stop = math.min(CHUNK, old - cstart)
      if redis.call("EXISTS", ck) == 1 then
        redis.call("RPUSH", ck, struct.pack("<I4I8I4I4I4", pos, 0, stop - pos, 0, stop - pos))
      end
    end
  end
end
a.length = newlen
touch_m(a)
used_delta(space(newlen) - space(old))
notify_inode(ino)
local r = {0, put_attr(ino, a)}
for _, s in ipairs(dropped) do r[#r + 1] = s end
return r
