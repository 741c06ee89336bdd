-- args: ino, capacity, then groups of (chunk index, slice record, end
-- offset): appends slices in order and grows the length -> {0, attr}
local ino, cap = tonumber(ARGV[5]), tonumber(ARGV[6])
local a = get_attr(ino)
if not a then return {ENOENT} end
if a.typ ~= T_FILE then return {EINVAL} end
local newlen = a.length
local i = 7
while i + 2 <= #ARGV do
  local e = tonumber(ARGV[i + 2])
  if e > newlen then newlen = e end
  i = i + 3
end
if newlen > a.length and not check_space(space(newlen) - space(a.length), cap) then return {ENOSPC} end
i = 7
while i + 2 <= #ARGV do
  redis.call("RPUSH", key("c", ino) .. "_" .. ARGV[i], ARGV[i + 1])
  i = i + 3
end
used_delta(space(newlen) - space(a.length))
a.length = newlen
touch_m(a)
notify_inode(ino)
return {0, put_attr(ino, a)}
