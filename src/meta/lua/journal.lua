-- args: slice id, end: journals that this session is about to upload a
-- block of the slice ending `end` bytes into it (the score keeps the
-- furthest end) -> {0}, or {EIO} when this session was cleaned (cut off
-- past its expiry): its earlier uploads went to the deleter, and a journal
-- made again under its id would let their commit through.
if SID ~= "0" and not redis.call("ZSCORE", P .. "sessions", SID) then return {5} end
redis.call("ZADD", uploads_key(SID), "GT", ARGV[6], ARGV[5])
return {0}
