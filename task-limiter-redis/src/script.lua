-- task-limiter-redis: one atomic step of the cluster budget (EVALSHA; Redis runs it alone).
-- KEYS: 1 expiry (ZSET pid -> lease end, ms of Redis TIME), 2 held (HASH pid -> slots counted),
--       3 want (HASH pid -> demand), 4 token (HASH pid -> fencing token), 5 fence (counter),
--       6 epoch (marker, no expiry), 7 grace (PX ttl after a fresh state), 8 budget (last budget)
-- ARGV: 1 pid, 2 budget, 3 ttl ms, 4 want, 5 keep (slots this process may be running, at most),
--       6 mode ("renew", "release" or "check"), 7 highest fencing token the caller has seen
-- Returns {grant, token, hold, share, free, live, grace}, or {-1, stored budget} on a mismatch.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pid, budget, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local want, keep, mode, hint = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])

-- Expiry by Redis's own clock: a lease whose end has passed is dropped with its demand.
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, p in ipairs(dead) do
  redis.call('HDEL', KEYS[2], p)
  redis.call('HDEL', KEYS[3], p)
  redis.call('HDEL', KEYS[4], p)
end
if #dead > 0 then redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now) end

local live = redis.call('ZSCORE', KEYS[1], pid)
if mode == 'check' then
  local stored = redis.call('GET', KEYS[8])
  local others = redis.call('ZCARD', KEYS[1]) - (live and 1 or 0)
  if stored and tonumber(stored) ~= budget and others > 0 then
    return {-1, tonumber(stored)}
  end
end
redis.call('SET', KEYS[8], budget)

-- The fence only grows, even across a Redis that lost its data: callers bring the highest
-- token they saw (passed on as the string it came in, never as a Lua number).
local fence = tonumber(redis.call('GET', KEYS[5]) or '0')
if hint > fence then
  redis.call('SET', KEYS[5], ARGV[7])
  fence = hint
end

-- A state without the epoch marker is fresh (first start, or a restart that lost the data):
-- the processes that still run items have not re-registered yet, so for one TTL nobody
-- grows beyond what it already runs.
if redis.call('EXISTS', KEYS[6]) == 0 then
  redis.call('SET', KEYS[6], 1)
  redis.call('SET', KEYS[7], 1, 'PX', ttl)
  -- The caller's hint is only the highest token *it* saw: another process may hold a higher
  -- one from before the loss. So the fence restarts at Redis's clock in microseconds, which
  -- is above every token issued before: each epoch started at its own clock reading and
  -- issued fewer tokens than microseconds passed since (one INCR per script run, and a run
  -- takes longer than that), as long as Redis's clock does not go back. A decimal string
  -- of 16 digits: exact as a Lua number (below 2^53), and never formatted by Lua.
  local us = t[1] .. string.format('%06d', tonumber(t[2]))
  if tonumber(us) > fence then redis.call('SET', KEYS[5], us) end
end
local grace = redis.call('EXISTS', KEYS[7]) == 1

local token
if live then token = tonumber(redis.call('HGET', KEYS[4], pid)) end
if not token then
  token = redis.call('INCR', KEYS[5])
  redis.call('HSET', KEYS[4], pid, token)
  redis.call('HSET', KEYS[2], pid, 0)
end
if mode == 'release' then want = 0 end
redis.call('HSET', KEYS[3], pid, want)

local sum, mine = 0, 0
local h = redis.call('HGETALL', KEYS[2])
for i = 1, #h, 2 do
  local n = tonumber(h[i + 1])
  sum = sum + n
  if h[i] == pid then mine = n end
end

-- Fair share by water-filling over the processes with demand, smallest demand first (ties by
-- id, so every caller computes the same shares): each gets min(its demand, an even split of
-- what is left). The shares add up to at most the budget, and a process with demand gets at
-- least min(demand, floor(budget / processes with demand)).
local wants = {}
local w = redis.call('HGETALL', KEYS[3])
for i = 1, #w, 2 do
  local n = tonumber(w[i + 1])
  if n > 0 then table.insert(wants, {w[i], n}) end
end
table.sort(wants, function(a, b)
  if a[2] ~= b[2] then return a[2] < b[2] end
  return a[1] < b[1]
end)
local left, share = budget, 0
for i, e in ipairs(wants) do
  local give = math.min(e[2], math.ceil(left / (#wants - i + 1)))
  left = left - give
  if e[1] == pid then share = give end
end

-- Grow only into slots nobody holds; shrink to the share at once. `free` is negative when a
-- resumed process re-registered items it ran while its lease was gone.
local free = budget - sum
local grant = math.min(share, mine + free)
if grace then grant = math.min(grant, keep) end
if grant < 0 then grant = 0 end
-- A process is counted for what it may still be running, not only for what it was granted:
-- slots it gives back are free for others only once its items no longer use them.
local hold = math.max(grant, keep)
if mode == 'release' and keep == 0 then
  redis.call('ZREM', KEYS[1], pid)
  redis.call('HDEL', KEYS[2], pid)
  redis.call('HDEL', KEYS[3], pid)
  redis.call('HDEL', KEYS[4], pid)
  return {0, token, 0, 0, budget - (sum - mine), 0, grace and 1 or 0}
end
redis.call('HSET', KEYS[2], pid, hold)
redis.call('ZADD', KEYS[1], now + ttl, pid)
-- The lease keys vanish once the last lease has ended; fence and epoch stay.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
for k = 1, 4 do redis.call('PEXPIREAT', KEYS[k], tonumber(last[2]) + 1000) end
return {grant, token, hold, share, free - (hold - mine), redis.call('ZCARD', KEYS[1]), grace and 1 or 0}
