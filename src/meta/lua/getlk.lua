-- args: ino, owner, type, start, end -> {0, type, start, end, pid} of the
-- first conflicting lock of another owner, or {0, 2} when there is none.
local ino, owner, typ = tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local s, e = tonumber(ARGV[8]), tonumber(ARGV[9])
local me = SID .. "_" .. owner
local all = redis.call("HGETALL", key("lock", ino))
for i = 1, #all, 2 do
  if all[i] ~= me then
    local v, pos = all[i + 1], 1
    while pos + 20 <= #v do
      local t, rs, re, rp = struct.unpack("<BI8I8I4", v, pos)
      if rs <= e and s <= re and (typ == 1 or t == 1) then return {0, t, rs, re, rp} end
      pos = pos + 21
    end
  end
end
return {0, 2}
