-- args: slice ids: uploads of this session that will never be committed
-- (the writer dropped them, a compaction failed) go from its journal to the
-- deleter, with the size the journal recorded.
local k = uploads_key(SID)
for j = 5, #ARGV do
  local size = redis.call("ZSCORE", k, ARGV[j])
  if size then
    orphan_slice(tonumber(ARGV[j]), tonumber(size))
    redis.call("ZREM", k, ARGV[j])
  end
end
return {0}
