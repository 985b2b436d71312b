-- Removes entries by name. KEYS: entry keys of one bucket. ARGV[1]: the bucket's prefix, `<base>{b}:`.
-- Answers removed counts per type, then foreign names skipped, then keys repaired.
local counts = {0, 0, 0, 0, 0}
for i = 1, #KEYS do remove_entry(ARGV[1], KEYS[i], counts) end
counts[6] = foreign
counts[7] = repaired
return counts
