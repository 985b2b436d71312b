-- A large Set, whose blob the SET before this script (in the same MULTI/EXEC) wrote under a staging key.
-- KEYS: its dimensions (see set_common), then its entry, meta, blob and staging key.
-- ARGV: the seed, the number of dimensions, the TTL in ms, the spec, the pointer (written as the entry),
-- only-if-absent ('1' or '0'), the deadline (unix ms). Moves the blob into place and points the entry at it,
-- or (only-if-absent and a valid entry) drops it. Answers 1 (stored), 0, or -1 (run after its deadline: the
-- staging key dropped, nothing written).
local k = 2 * ndims + 1
local entry, meta, blob, staging = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
if is_late(ARGV[7]) then
  redis.call('UNLINK', staging)
  return -1
end
local ttl_s = ARGV[3]
local meta_value = join(entry, ARGV[4], ttl_s)
if ARGV[6] == '1' and is_valid(entry, meta, meta_value) then
  redis.call('UNLINK', staging)
  return 0
end
redis.call('UNLINK', blob)
redis.call('RENAME', staging, blob)
redis.call('SET', entry, ARGV[5], 'PX', ttl_s)
redis.call('SET', meta, meta_value, 'PX', ttl_s)
commit()
return 1
