-- args: parent, ARGV[6] name -> {0, ino, attr}
local parent = tonumber(ARGV[5])
local e = redis.call("HGET", key("d", parent), ARGV[6])
if not e then
  local pa = redis.call("EXISTS", key("i", parent))
  if pa == 0 then return {ENOENT} end
  local a = get_attr(parent)
  if a.typ ~= T_DIR then return {ENOTDIR} end
  return {ENOENT}
end
local _, ino = parse_entry(e)
local s = redis.call("GET", key("i", ino))
if not s then return {ENOENT} end
return {0, ino, s}
