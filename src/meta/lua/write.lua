-- args: ino, capacity, then groups of (chunk index, slice record, end
-- offset, inline bytes or ""): appends slices in order (an inline slice's
-- bytes stored under b<id> first), grows the length and drops records the
-- new ones hide -> {0, attr, {chunk index, records kept}...}
local ino, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local a = get_attr(ino)
if not a then return {ENOENT} end
if a.typ ~= T_FILE then return {EINVAL} end
local newlen = a.length
local i = 7
while i + 3 <= #ARGV do
  local e = tonumber(ARGV[i + 2])
  if e > newlen then newlen = e end
  i = i + 4
end
if newlen > a.length and not check_space(space(newlen) - space(a.length), cap) then return {ENOSPC} end
i = 7
local touched, order = {}, {}
while i + 3 <= #ARGV do
  if ARGV[i + 3] ~= "" then
    local _, id = struct.unpack(SLICE, ARGV[i + 1])
    redis.call("SET", key("b", id), ARGV[i + 3])
  end
  redis.call("RPUSH", key("c", ino) .. "_" .. ARGV[i], ARGV[i + 1])
  if not touched[ARGV[i]] then touched[ARGV[i]] = true; order[#order + 1] = ARGV[i] end
  i = i + 4
end
local lens = {}
for _, indx in ipairs(order) do
  lens[#lens + 1] = tonumber(indx)
  lens[#lens + 1] = prune_chunk(key("c", ino) .. "_" .. indx)
end
used_delta(space(newlen) - space(a.length))
a.length = newlen
touch_m(a)
notify_inode(ino)
return {0, put_attr(ino, a), lens}
