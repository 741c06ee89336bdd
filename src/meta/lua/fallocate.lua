-- args: ino, mode, offset, length, capacity -> {0, attr}
-- mode bits: 1 keep size, 2 punch hole, 16 zero range.
local ino, mode, off, len, cap = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])
local a = get_attr(ino)
if not a then return {ENOENT} end
if trashed(ino, a) then return {EPERM} end
if a.typ == T_DIR then return {EISDIR} end
if a.typ ~= T_FILE then return {ENODEV} end
if bit.band(mode, bit.bnot(1 + 2 + 16)) ~= 0 then return {EOPNOTSUPP} end
local keep = bit.band(mode, 1) ~= 0
local punch = bit.band(mode, 2) ~= 0
local zero = bit.band(mode, 16) ~= 0
if punch and not keep then return {EOPNOTSUPP} end
local stop = off + len
local newlen = a.length
if not keep and stop > newlen then newlen = stop end
if newlen > a.length and not check_space(space(newlen) - space(a.length), cap) then return {ENOSPC} end
if punch or zero then
  local zstop = math.min(stop, math.max(a.length, newlen))
  local pos = off
  while pos < zstop do
    local indx = math.floor(pos / CHUNK)
    local cpos = pos - indx * CHUNK
    local n = math.min(CHUNK - cpos, zstop - pos)
    redis.call("RPUSH", key("c", ino) .. "_" .. string.format("%d", indx), struct.pack("<I4I8I4I4I4", cpos, 0, n, 0, n))
    pos = pos + n
  end
end
used_delta(space(newlen) - space(a.length))
if punch or zero or newlen ~= a.length then touch_m(a) else touch_c(a) end
a.length = newlen
notify_inode(ino)
return {0, put_attr(ino, a)}
