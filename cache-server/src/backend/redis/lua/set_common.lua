-- The bookkeeping of Sets (prepended to set, set_nx and set_large).
-- KEYS start with the batch's distinct dimensions, each a generation key and its index: KEYS[1..2 * D].
-- ARGV[1] is a random seed from which new generation tokens are made (seed .. a 4-hex-digit counter: a
-- token is never used twice); ARGV[2] is D. Each Set names its dimensions by a spec string, its prune flag
-- then the numbers of its dimensions (`0,1,3`), so a dimension shared by the batch's Sets (a type's, in
-- most batches) is read, checked and written once.
local now = now_ms()
local seed, fresh = ARGV[1], 0
local ndims = tonumber(ARGV[2])
local dims = {}
local specs, ttls = {}, {}

-- A dimension's state: its token, whether it is new, the longest TTL of its new members, its members, and
-- whether to prune it. Its current token, or a new one where the token is missing (invalidated, evicted,
-- new) or where its index is (evicted, drained, expired): an index that lost members must not vouch for the
-- entries it no longer lists, so their generation ends with it.
local function dim(d)
  local s = dims[d]
  if s then return s end
  local gen, index = KEYS[2 * d - 1], KEYS[2 * d]
  local token = get_string(gen)
  local indexed = has_zset(index)
  local created = false
  if not token or not indexed then
    fresh = fresh + 1
    token = seed .. string.format('%04x', fresh)
    created = true
  end
  s = {token, created, 0, {}, false}
  dims[d] = s
  return s
end

-- A Set's spec, parsed once per distinct string: whether it prunes, its dimensions' states and the meta
-- value of a Set under them (the snapshot of their tokens, no reads yet).
local function spec(spec_s)
  local p = specs[spec_s]
  if p then return p end
  local list, tokens = {}, {}
  for n in string.gmatch(spec_s, '%d+') do list[#list + 1] = tonumber(n) end
  -- The first number is the prune flag.
  local prune = list[1] == 1
  table.remove(list, 1)
  local states = {}
  for i, d in ipairs(list) do
    local s = dim(d)
    states[i] = s
    tokens[i] = s[1]
    if prune then s[5] = true end
  end
  p = {states, table.concat(tokens) .. '|0|0', list}
  specs[spec_s] = p
  return p
end

-- The numbers of a spec's dimensions.
local function spec_dims(spec_s)
  return spec(spec_s)[3]
end

-- A TTL string's number and index score (the expiry rounded up to 1/16 of the TTL, at most a minute, as a
-- string: numbers handed to redis.call are formatted with %.17g, which is slow), once per distinct string.
local function ttl_of(ttl_s)
  local t = ttls[ttl_s]
  if t then return t end
  local ttl = tonumber(ttl_s)
  local g = math.min(60000, math.floor(ttl / 16) + 1)
  t = {ttl, string.format('%d', math.ceil((now + ttl) / g) * g)}
  ttls[ttl_s] = t
  return t
end

-- Records `entry`, a Set of `spec_s` and `ttl_s`, in its dimensions' indexes; answers its meta value.
local function join(entry, spec_s, ttl_s)
  local p, t = spec(spec_s), ttl_of(ttl_s)
  for _, s in ipairs(p[1]) do
    if t[1] > s[3] then s[3] = t[1] end
    local members = s[4]
    members[#members + 1] = t[2]
    members[#members + 1] = entry
  end
  return p[2]
end

-- Whether Redis runs this script after `deadline_s` (unix ms by the writing server's clock): the server
-- has answered the Set from memory by then, and an invalidation may have been acknowledged since, so the
-- Set must not land (the same rule as lua/late.lua for batches).
local function is_late(deadline_s)
  return now_ms() > tonumber(deadline_s)
end

-- Whether the entry at `entry` is valid under the meta value `meta_value` a Set would write.
local function is_valid(entry, meta, meta_value)
  if redis.call('EXISTS', entry) == 0 then return false end
  local m = get_string(meta)
  local snapshot = string.sub(meta_value, 1, #meta_value - 4)
  return m and string.sub(m, 1, #snapshot + 1) == snapshot .. '|'
end

-- Writes the generations and index members join() recorded. Generations and indexes outlive their longest
-- member by a quarter (and a second); each is stretched only when it would end before its longest new
-- member, and pruned of expired members when a Set asked (one Set in 16).
local function commit()
  for d = 1, ndims do
    local s = dims[d]
    if s and #s[4] > 0 then
      local gen, index = KEYS[2 * d - 1], KEYS[2 * d]
      local ttl = s[3]
      local life = string.format('%d', ttl + math.floor(ttl / 4) + 1000)
      if s[2] then
        redis.call('SET', gen, s[1], 'PX', life)
      elseif redis.call('PTTL', gen) < ttl then
        redis.call('PEXPIRE', gen, life)
      end
      redis.call('ZADD', index, unpack(s[4]))
      if s[5] then redis.call('ZREMRANGEBYSCORE', index, '-inf', string.format('%d', now)) end
      if redis.call('PTTL', index) < ttl then redis.call('PEXPIRE', index, life) end
    end
  end
end
