-- Invalidates dimensions of one bucket: removes their generations (every entry that recorded them becomes a
-- miss at once, whatever Redis evicted), then pops members of their indexes and removes those entries
-- (reclaiming memory and counting). KEYS: the generation keys, then the indexes. ARGV: how many generation
-- keys, most members to pop, the bucket's prefix. Called again without generations while it pops its fill.
-- Answers removed counts per type, members popped, foreign members skipped, keys repaired.
local ngens, budget, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local counts = {0, 0, 0, 0, 0}
for i = 1, ngens do redis.call('UNLINK', KEYS[i]) end
local popped = 0
for i = ngens + 1, #KEYS do
  if popped >= budget then break end
  if has_zset(KEYS[i]) then
    local members = redis.call('ZPOPMIN', KEYS[i], budget - popped)
    for j = 1, #members, 2 do remove_entry(prefix, members[j], counts) end
    popped = popped + #members / 2
  end
end
counts[6] = popped
counts[7] = foreign
counts[8] = repaired
return counts
