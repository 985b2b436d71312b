-- Adds reads counted in a server to entries' metas. KEYS: metas of one bucket. ARGV, per meta: the reads,
-- the last read's time (unix ms). Answers each meta's new read count (0 where the meta is gone).
local totals = {}
for i = 1, #KEYS do
  local m = get_string(KEYS[i])
  local total = 0
  if m then
    local snapshot, count, last = string.match(m, '^(.*)|(%d+)|(%d+)$')
    if snapshot then
      total = tonumber(count) + tonumber(ARGV[2 * i - 1])
      local at = ARGV[2 * i]
      if tonumber(at) < tonumber(last) then at = last end
      redis.call('SET', KEYS[i], snapshot .. '|' .. string.format('%d', total) .. '|' .. at, 'KEEPTTL')
    end
  end
  totals[i] = total
end
return totals
