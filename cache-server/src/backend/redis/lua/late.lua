-- Last in a batch's transaction: a transaction that Redis runs after the batch's deadline (held by the
-- network while the server had answered its Sets from memory, then delivered) must not resurrect values
-- that invalidations acknowledged meanwhile should have removed. KEYS: the batch's entries and metas.
-- ARGV[1]: the deadline, unix ms by the server's clock. Unlinks them if Redis' clock is past it; answers
-- how many it unlinked (0 when on time).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now <= tonumber(ARGV[1]) then return 0 end
return redis.call('UNLINK', unpack(KEYS))
