-- Prepended to every script: Redis' clock, and the repair of bookkeeping keys of the wrong type (a key
-- another client wrote under our prefix is removed and counted, never allowed to fail a call).
local repaired = 0

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- The string at `key`, or false.
local function get_string(key)
  local v = redis.pcall('GET', key)
  if type(v) == 'table' and v.err then
    redis.call('UNLINK', key)
    repaired = repaired + 1
    return false
  end
  return v
end

-- Whether `key` holds a sorted set.
local function has_zset(key)
  local t = redis.call('TYPE', key)['ok']
  if t == 'zset' then return true end
  if t ~= 'none' then
    redis.call('UNLINK', key)
    repaired = repaired + 1
  end
  return false
end
