-- Removes the entries a multi-field selector matched in one index. KEYS: the dimension's generation, its
-- index, then the matched entries. ARGV[1]: the bucket's prefix. An index that is gone (evicted) no longer
-- lists every entry of its dimension, so the dimension's generation goes instead: all of them become misses.
-- Answers removed counts per type, whether the generation went, foreign names skipped, keys repaired.
local counts = {0, 0, 0, 0, 0}
local bumped = 0
if not has_zset(KEYS[2]) then
  redis.call('UNLINK', KEYS[1])
  bumped = 1
end
for i = 3, #KEYS do
  remove_entry(ARGV[1], KEYS[i], counts)
  if bumped == 0 then redis.call('ZREM', KEYS[2], KEYS[i]) end
end
counts[6] = bumped
counts[7] = foreign
counts[8] = repaired
return counts
