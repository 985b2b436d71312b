-- Removing entries (prepended to delete, drain and filter). An entry's type is its rendered key's first
-- segment; counts follow CacheType::ALL.
local slots = {export_result = 1, metadata = 2, object = 3, user = 4, config = 5}
local foreign = 0

-- Removes the entry named `member`, with its meta and blob, if it is an entry of the bucket `prefix`
-- (`<base>{b}:`); counts it by type if it was there. Any other name (an index member written by someone
-- else) is left alone and counted as foreign: only our keys are ever deleted.
local function remove_entry(prefix, member, counts)
  if string.sub(member, 1, #prefix) ~= prefix then
    foreign = foreign + 1
    return
  end
  local rendered = string.sub(member, #prefix + 1)
  local slot = slots[string.match(rendered, '^([^:~]+):')]
  if not slot then
    foreign = foreign + 1
    return
  end
  if redis.call('UNLINK', member) == 1 then counts[slot] = counts[slot] + 1 end
  redis.call('UNLINK', prefix .. '~m:' .. rendered, prefix .. '~b:' .. rendered)
end
