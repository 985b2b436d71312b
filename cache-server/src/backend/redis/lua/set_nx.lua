-- An only-if-absent Set. KEYS: its dimensions (see set_common), then its entry, meta and blob.
-- ARGV: the seed, the number of dimensions, the TTL in ms, the spec, the envelope, the deadline (unix ms).
-- Stores unless a valid entry is there (an invalidated one counts as absent). Answers 1 (stored), 0, or -1
-- (run after its deadline: nothing written).
if is_late(ARGV[6]) then return -1 end
local k = 2 * ndims + 1
local entry, meta, ttl_s = KEYS[k], KEYS[k + 1], ARGV[3]
local meta_value = join(entry, ARGV[4], ttl_s)
if is_valid(entry, meta, meta_value) then return 0 end
redis.call('SET', entry, ARGV[5], 'PX', ttl_s)
redis.call('SET', meta, meta_value, 'PX', ttl_s)
redis.call('UNLINK', KEYS[k + 2])
commit()
return 1
