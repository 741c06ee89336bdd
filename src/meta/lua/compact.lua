-- args: ino, chunk index, the first records of the chunk as they were read
-- (concatenated), the record of the slice that now holds their bytes.
-- Replaces those records with the new one if the chunk still starts with
-- them; otherwise the new slice is journaled for deletion -> {0, kept} or
-- {EAGAIN}. Content does not change, so no event is published.
local ino, old, new = tonumber(ARGV[5]), ARGV[7], ARGV[8]
local ck = key("c", ino) .. "_" .. ARGV[6]
local n = #old / 24
local recs = redis.call("LRANGE", ck, 0, n - 1)
-- Either referenced or handed to the deleter below: out of the journal.
local _, newid = struct.unpack(SLICE, new)
-- Not in this session's journal: a cleanup of an expired session of this
-- node has handed its objects to the deleter already.
local journaled = SID == "0" or redis.call("ZREM", uploads_key(SID), string.format("%d", newid)) == 1
if not journaled then return {EAGAIN} end
if not get_attr(ino) or #recs ~= n or table.concat(recs) ~= old then
  redis.call("ZADD", P .. "delslices", NOW, new)
  return {EAGAIN}
end
for _, r in ipairs(recs) do
  local _, id = struct.unpack(SLICE, r)
  if id ~= 0 then redis.call("ZADD", P .. "delslices", NOW, r) end
end
redis.call("LTRIM", ck, n, -1)
redis.call("LPUSH", ck, new)
return {0, prune_chunk(ck)}
