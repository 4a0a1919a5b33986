"""The Lua scripts: each check-and-change runs atomically in Redis, on Redis's clock
(``TIME``), so nodes with skewed clocks still agree on what has expired."""

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] the lease set; ARGV member, ttl (ms), cap. 1 when granted, else 0.
ACQUIRE_LEASE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
"""

# KEYS the lease sets; ARGV[1] ttl (ms), ARGV[i + 1] this node's member in KEYS[i].  Re-added when
# missing, so leases granted while Redis was away (or before it restarted empty) are counted again.
RENEW_LEASES = _NOW + """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
return #KEYS
"""

# KEYS[1] the node's hash, KEYS[2] the node set; ARGV node id, ttl (ms), then field, value pairs.
# Returns the ids of the live nodes.
HEARTBEAT = _NOW + """
local ttl = tonumber(ARGV[2])
local fields = {'seen', now}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - ttl)
return redis.call('ZRANGE', KEYS[2], 0, -1)
"""

# KEYS[1] the hosts' hash, KEYS[2] their expiry index; ARGV host key, JSON entry, expiry (ms since the epoch).
REMEMBER_BROKEN = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
return 1
"""

# KEYS as above: drop what expired, return the rest as host key, JSON pairs.
BROKEN_HOSTS = _NOW + """
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, host in ipairs(expired) do redis.call('HDEL', KEYS[1], host) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
return redis.call('HGETALL', KEYS[1])
"""

# KEYS[1] a lease set: its members that have not expired.
LIVE_LEASES = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# GCRA (tlsmta.delivery._pace). KEYS[1] the destination's TAT (ms); ARGV interval, tolerance (ms).
# 0 when the message is counted, else the milliseconds to wait.
PACE = _NOW + """
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = math.max(tonumber(redis.call('GET', KEYS[1]) or now), now)
if tat - tolerance > now then
  return tat - tolerance - now
end
redis.call('SET', KEYS[1], tat + interval, 'PX', tat + interval - now + 1000)
return 0
"""

# KEYS[1] the day's report lock for a domain; ARGV node id, lifetime (ms). 1 when this node holds it.
CLAIM_REPORT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then return 1 end
return 0
"""

# KEYS[1] the day's aggregates, KEYS[2] when the first node shared it, KEYS[3] the node set; ARGV node
# id, its aggregate (JSON), lifetime (ms). Returns ms since the first share, the live node ids, an empty
# string, then node id, aggregate pairs.
SHARE_REPORTS = _NOW + """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('SET', KEYS[2], now, 'NX', 'PX', ARGV[3])
local out = {now - tonumber(redis.call('GET', KEYS[2]))}
for _, v in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do out[#out + 1] = v end
out[#out + 1] = ''
for _, v in ipairs(redis.call('HGETALL', KEYS[1])) do out[#out + 1] = v end
return out
"""
