-- A batch of Sets, after the SETs of their values and metas (with their TTLs) in the same MULTI/EXEC.
-- KEYS: the batch's dimensions (see set_common), then per Set its entry and its meta.
-- ARGV: the seed, the number of dimensions D, the token the server expects for each dimension (D values),
-- then per Set its TTL in ms and its spec.
-- The server wrote each meta with the tokens it expected (learned from earlier answers); a dimension whose
-- token is not that one (an invalidation since, an evicted index, a dimension new to the server) has the
-- metas of its Sets written again here. Then the index members and the generations' TTLs.
-- Answers the keys repaired, then each dimension's token.
local rewrite = {}
for d = 1, ndims do
  if dim(d)[1] ~= ARGV[2 + d] then rewrite[d] = true end
end
local stale = {}
local function is_stale(spec_s)
  local v = stale[spec_s]
  if v == nil then
    v = false
    for _, d in ipairs(spec_dims(spec_s)) do
      if rewrite[d] then v = true end
    end
    stale[spec_s] = v
  end
  return v
end
local k = 2 * ndims + 1
for i = 3 + ndims, #ARGV, 2 do
  local ttl_s, spec_s = ARGV[i], ARGV[i + 1]
  local meta_value = join(KEYS[k], spec_s, ttl_s)
  if is_stale(spec_s) then redis.call('SET', KEYS[k + 1], meta_value, 'PX', ttl_s) end
  k = k + 2
end
commit()
local answer = {repaired}
for d = 1, ndims do answer[d + 1] = dim(d)[1] end
return answer
