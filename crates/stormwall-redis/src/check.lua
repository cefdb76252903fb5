-- Stormwall rate limit: one multi-limit decision, all or nothing, in one atomic call.
--
-- KEYS: the state keys of every limit (all under one {hash tag}).
-- ARGV[1]: '1' = acquire (spend if every limit admits), '0' = peek (spend nothing).
-- ARGV[2]: the number of limits n. Then, for limit i (0-based), at b = 3 + 7 * i:
--   ARGV[b]     algorithm: 'g' GCRA, 'k' leaky bucket, 'l' sliding log, 'c' sliding counter,
--               'f' fixed window
--   ARGV[b + 1] index in KEYS of its first key (the sliding log uses two: list, sum)
--   ARGV[b + 2] limit (units per period)
--   ARGV[b + 3] period in microseconds
--   ARGV[b + 4] emission interval in microseconds
--   ARGV[b + 5] burst
--   ARGV[b + 6] cost
-- Returns 5 integers per limit: allowed (1/0), remaining, reset (us), retry_after (us, -1 =
-- never), delay (us, leaky bucket).
--
-- Time is the server's (TIME), in microseconds: below 2^53, so exact in Lua's doubles.
-- Numbers are written with '%.0f' (tostring would round them to 14 digits).
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local acquire = ARGV[1] == '1'
local n = tonumber(ARGV[2])
local NEVER = -1
local writes = {}

local function fmt(x) return string.format('%.0f', x) end
local function px(us)
  local m = math.ceil(us / 1000)
  if m < 1 then m = 1 end
  return fmt(m)
end
local function nonneg(x) if x < 0 then return 0 end return x end
local function num(v) if v then return tonumber(v) or 0 end return 0 end

local function gcra(k, T, burst, cost, leaky)
  local tat = num(redis.call('GET', k))
  local tau = burst * T
  local base = math.max(tat, now)
  local limit_at = now + tau
  local before = nonneg(math.floor((limit_at - base) / T))
  if cost > burst then return {0, before, base - now, NEVER, 0} end
  local new = base + cost * T
  if new <= limit_at then
    if cost > 0 then
      writes[#writes + 1] = function() redis.call('SET', k, fmt(new), 'PX', px(new - now)) end
    end
    local delay = 0
    if leaky then delay = base - now end
    return {1, math.floor((limit_at - new) / T), new - now, 0, delay}
  end
  return {0, before, base - now, new - tau - now, 0}
end

local function parse(e)
  local i = string.find(e, ':', 1, true)
  return tonumber(string.sub(e, 1, i - 1)), tonumber(string.sub(e, i + 1))
end

local function slog(kl, ks, limit, p, cost)
  local sum = num(redis.call('GET', ks))
  local last = redis.call('LINDEX', kl, -1)
  local tnow, last_ts = now, nil
  if last then
    last_ts = parse(last)
    if last_ts > tnow then tnow = last_ts end
  end
  local popped = false
  while true do
    local first = redis.call('LINDEX', kl, 0)
    if not first then break end
    local ts, c = parse(first)
    if ts + p <= tnow then
      redis.call('LPOP', kl)
      sum = sum - c
      popped = true
    else
      break
    end
  end
  if popped then
    if sum <= 0 then
      sum = 0
      last_ts = nil
      redis.call('DEL', kl, ks)
    else
      redis.call('SET', ks, fmt(sum), 'KEEPTTL')
    end
  end
  local function reset_of() if last_ts then return last_ts + p - tnow end return 0 end
  if sum + cost <= limit then
    local reset = 0
    if acquire and cost > 0 then
      reset = p
      local same = last_ts == tnow
      local total = sum + cost
      writes[#writes + 1] = function()
        if same then
          local _, c = parse(redis.call('LINDEX', kl, -1))
          redis.call('LSET', kl, -1, fmt(tnow) .. ':' .. fmt(c + cost))
        else
          redis.call('RPUSH', kl, fmt(tnow) .. ':' .. fmt(cost))
        end
        redis.call('SET', ks, fmt(total))
        redis.call('PEXPIRE', kl, px(tnow + p - now))
        redis.call('PEXPIRE', ks, px(tnow + p - now))
      end
    elseif acquire or sum > 0 then
      reset = reset_of()
      if cost > 0 and p > reset then reset = p end
    end
    return {1, limit - sum - cost, reset, 0, 0}
  end
  local remaining = nonneg(limit - sum)
  if cost > limit then return {0, remaining, reset_of(), NEVER, 0} end
  local need = sum + cost - limit
  local freed, retry = 0, NEVER
  local entries = redis.call('LRANGE', kl, 0, -1)
  for _, e in ipairs(entries) do
    local ts, c = parse(e)
    freed = freed + c
    if freed >= need then
      retry = ts + p - tnow
      break
    end
  end
  return {0, remaining, reset_of(), retry, 0}
end

local function scounter(k, limit, p, cost)
  local h = redis.call('HMGET', k, 's', 'p', 'c')
  local start, prev, cur = num(h[1]), num(h[2]), num(h[3])
  local tnow = math.max(now, start)
  local w = tnow - math.fmod(tnow, p)
  if w ~= start then
    if w == start + p then prev = cur else prev = 0 end
    cur = 0
    start = w
  end
  local e = tnow - start
  local used = prev * (p - e) + cur * p
  local function rem(u) return nonneg(math.floor((limit * p - u) / p)) end
  local function rst(c, pv)
    if c > 0 then return start + 2 * p - tnow end
    if pv > 0 then return start + p - tnow end
    return 0
  end
  if used + cost * p <= limit * p then
    if cost > 0 then
      writes[#writes + 1] = function()
        redis.call('HSET', k, 's', fmt(start), 'p', fmt(prev), 'c', fmt(cur + cost))
        redis.call('PEXPIRE', k, px(start + 2 * p - now))
      end
    end
    return {1, rem(used + cost * p), rst(cur + cost, prev), 0, 0}
  end
  local remaining, rs = rem(used), rst(cur, prev)
  if cost > limit then return {0, remaining, rs, NEVER, 0} end
  local retry
  if cur + cost <= limit then
    local room = math.floor((limit - cur - cost) * p / math.max(prev, 1))
    retry = (p - math.min(room, p)) - e
  else
    local e2 = 0
    if cur > 0 then e2 = p - math.min(math.floor((limit - cost) * p / cur), p) end
    retry = (p - e) + e2
  end
  if retry < 1 then retry = 1 end
  return {0, remaining, rs, retry, 0}
end

local function fixed(k, limit, p, cost)
  local h = redis.call('HMGET', k, 's', 'c')
  local start, count = num(h[1]), num(h[2])
  local tnow = math.max(now, start)
  local w = tnow - math.fmod(tnow, p)
  if w ~= start then
    start = w
    count = 0
  end
  local left = w + p - tnow
  if count + cost <= limit then
    if cost > 0 then
      writes[#writes + 1] = function()
        redis.call('HSET', k, 's', fmt(w), 'c', fmt(count + cost))
        redis.call('PEXPIRE', k, px(w + p - now))
      end
    end
    local reset = 0
    if count + cost > 0 then reset = left end
    return {1, limit - count - cost, reset, 0, 0}
  end
  local retry = left
  if cost > limit then retry = NEVER end
  return {0, nonneg(limit - count), left, retry, 0}
end

local out = {}
local all = true
for i = 0, n - 1 do
  local b = 3 + 7 * i
  local algo = ARGV[b]
  local ki = tonumber(ARGV[b + 1])
  local limit, p = tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local T, burst, cost = tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
  local r
  if algo == 'g' then
    r = gcra(KEYS[ki], T, burst, cost, false)
  elseif algo == 'k' then
    r = gcra(KEYS[ki], T, burst, cost, true)
  elseif algo == 'l' then
    r = slog(KEYS[ki], KEYS[ki + 1], limit, p, cost)
  elseif algo == 'c' then
    r = scounter(KEYS[ki], limit, p, cost)
  else
    r = fixed(KEYS[ki], limit, p, cost)
  end
  if r[1] == 0 then all = false end
  for j = 1, 5 do out[#out + 1] = r[j] end
end
if acquire and all then
  for _, w in ipairs(writes) do w() end
end
return out
