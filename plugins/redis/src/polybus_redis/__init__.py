"""Redis Streams backend of polybus."""

from polybus_redis.backend import CAPABILITIES, RedisBackend
from polybus_redis.settings import RedisSettings

__all__ = ["CAPABILITIES", "RedisBackend", "RedisSettings"]
