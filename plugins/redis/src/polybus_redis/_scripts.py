"""Lua scripts the backend runs on the server, and how they are called.

Each script is loaded once per connection and called by its SHA1. A server that
restarted forgets its scripts; a ``NOSCRIPT`` reply loads them again and
repeats only the calls that failed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

__all__ = [
    "ACQUIRE_LEASE",
    "CREATE_GROUP",
    "CREATE_TOPIC",
    "HEARTBEAT",
    "RELEASE_LEASE",
    "RENEW_LEASE",
    "Script",
]

ScriptArg = str | bytes | int


@dataclass(frozen=True, slots=True)
class Script:
    """One Lua script and its SHA1."""

    name: str
    source: str

    @property
    def sha(self) -> str:
        """SHA1 under which the server caches the script."""
        return hashlib.sha1(self.source.encode(), usedforsecurity=False).hexdigest()

    async def __call__(
        self,
        client: Redis,
        keys: Sequence[str],
        args: Sequence[ScriptArg],
    ) -> Any:
        """Run the script, loading it first if the server does not know it."""
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.script_load(self.source)
            return await client.evalsha(self.sha, len(keys), *keys, *args)


CREATE_TOPIC: Final = Script(
    "create_topic",
    """
-- KEYS: meta, topics, stream of each partition.
-- ARGV: topic, partitions, retention_maxlen, retention_ms.
-- Creates the partitions' streams empty, so publishing can use NOMKSTREAM.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
for i = 3, #KEYS do
  redis.call('XGROUP', 'CREATE', KEYS[i], 'polybus-init', '$', 'MKSTREAM')
  redis.call('XGROUP', 'DESTROY', KEYS[i], 'polybus-init')
end
local now = redis.call('TIME')
local created = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('HSET', KEYS[1], 'partitions', ARGV[2], 'created_ms', created)
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[1], 'retention_maxlen', ARGV[3])
end
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'retention_ms', ARGV[4])
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
""",
)

CREATE_GROUP: Final = Script(
    "create_group",
    """
-- KEYS: meta, groups, stream of each partition. ARGV: group, start id.
-- Creates the group on every partition unless the topic is gone, so a
-- consumer of a deleted topic does not bring its streams back.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
for i = 3, #KEYS do
  local ok = redis.pcall('XGROUP', 'CREATE', KEYS[i], ARGV[1], ARGV[2],
                         'MKSTREAM')
  if type(ok) == 'table' and ok.err and not string.find(ok.err, 'BUSYGROUP') then
    return redis.error_reply(ok.err)
  end
end
redis.call('SADD', KEYS[2], ARGV[1])
return 1
""",
)

HEARTBEAT: Final = Script(
    "heartbeat",
    """
-- KEYS: members, meta. ARGV: member, ttl_ms, 'beat' or 'leave'.
-- Drops expired members, renews (or removes) this one, returns the live ones,
-- or false when the topic is gone. Expiry uses the server's clock, so members
-- on hosts whose clocks disagree still agree on who is alive.
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return false
end
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
if ARGV[3] == 'leave' then
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
""",
)

ACQUIRE_LEASE: Final = Script(
    "acquire_lease",
    """
-- KEYS: lease, handed_over, meta. ARGV: member, ttl_ms.
-- Returns {owned, handed_over}: handed_over is 1 when the previous owner
-- released the partition cleanly, so its pending entries are free to take.
if redis.call('EXISTS', KEYS[3]) == 0 then
  return {0, 0}
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('DEL', KEYS[2])}
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {1, 0}
end
return {0, 0}
""",
)

RENEW_LEASE: Final = Script(
    "renew_lease",
    """
-- KEYS: lease. ARGV: member, ttl_ms. Returns 1 while the member owns it.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
""",
)

RELEASE_LEASE: Final = Script(
    "release_lease",
    """
-- KEYS: lease, handed_over, meta. ARGV: member.
-- Gives the partition up and marks the hand-over as clean.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  if redis.call('EXISTS', KEYS[3]) == 1 then
    redis.call('SET', KEYS[2], ARGV[1])
  end
  return 1
end
return 0
""",
)
