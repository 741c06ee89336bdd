-- args: ino, capacity, commit token, n, n tokens of earlier commits whose
-- replies arrived (their markers go), then groups of (chunk index, slice
-- record, end offset, inline bytes or ""): appends slices in order (an
-- inline slice's bytes stored under b<id> first, an object slice leaves the
-- caller's pending-upload journal), grows the length and drops
-- records the new ones hide -> {0, attr, {chunk index, records kept}...,
-- {records dropped}}.
-- Idempotent: the token (the commit's first slice id) leaves a marker, and a
-- commit whose marker exists was applied already (its reply was lost).
local ino, cap, token = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7]
local ndone = tonumber(ARGV[8])
for j = 1, ndone do redis.call("DEL", P .. "w" .. ARGV[8 + j]) end
local first = 9 + ndone
local a = get_attr(ino)
if not a then return {ENOENT} end
if a.typ ~= T_FILE then return {EINVAL} end
local marker = P .. "w" .. token
if token ~= "0" and redis.call("EXISTS", marker) == 1 then return {0, pack_attr(a), {}} end
local newlen = a.length
local i = first
while i + 3 <= #ARGV do
  local e = tonumber(ARGV[i + 2])
  if e > newlen then newlen = e end
  i = i + 4
end
if newlen > a.length and not check_space(space(newlen) - space(a.length), cap) then return {ENOSPC} end
-- An object slice must still be in the caller's pending-upload journal: if
-- this node's session expired and was cleaned (it was cut off longer than
-- the expiry), its uploads went to the deleter and committing them would
-- reference objects about to be deleted. Refused (EIO, and the writer
-- reports it) rather than revived.
if SID ~= "0" then
  local j = first
  while j + 3 <= #ARGV do
    local _, id = struct.unpack(SLICE, ARGV[j + 1])
    if ARGV[j + 3] == "" and id ~= 0
      and not redis.call("ZSCORE", uploads_key(SID), string.format("%d", id)) then
      return {5}
    end
    j = j + 4
  end
end
i = first
local touched, order = {}, {}
while i + 3 <= #ARGV do
  local _, id = struct.unpack(SLICE, ARGV[i + 1])
  if ARGV[i + 3] ~= "" then
    redis.call("SET", key("b", id), ARGV[i + 3])
  elseif id ~= 0 then
    -- Referenced from now on: out of the writer's pending-upload journal.
    redis.call("ZREM", uploads_key(SID), string.format("%d", id))
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
-- Kept an hour at most: the writer deletes it with its next commit.
if token ~= "0" then redis.call("SET", marker, "1", "EX", 3600) end
return {0, put_attr(ino, a), lens, DROPPED}
