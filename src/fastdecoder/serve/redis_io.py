"""Redis plumbing shared by ``serve`` and ``replay``: connecting with backoff, the redis-py import with a clear
error, and stream-id helpers. No decoding here."""
from __future__ import annotations

import logging
import threading
import time

from fastdecoder.errors import UserError

__all__ = ["require_redis", "connect", "Backoff", "id_ms", "last_id", "retryable"]

log = logging.getLogger("fastdecoder.serve")


def require_redis():
    """The redis-py module, or a UserError saying how to install it."""
    try:
        import redis
    except ImportError:
        raise UserError("the Redis client is not installed: pip install 'fastdecoder[serve]' (redis-py)") from None
    return redis


def retryable() -> tuple:
    """The exceptions of a lost connection (the server down, restarting, or unreachable)."""
    redis = require_redis()
    return (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, ConnectionError, TimeoutError)


def connect(url: str, *, socket_timeout: float = 5.0):
    """A client for ``url`` (redis://HOST:PORT/DB) with redis-py's own retries off (the callers retry, knowing what
    a repeated command would do). Raises UserError on a malformed URL."""
    redis = require_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    if not isinstance(url, str) or not url.startswith(("redis://", "rediss://", "unix://")):
        raise UserError(f"--redis must be a URL like redis://127.0.0.1:6379/0, got {url!r}")
    try:
        return redis.Redis.from_url(url, socket_timeout=socket_timeout, socket_connect_timeout=2.0,
                                    retry=Retry(NoBackoff(), 0), health_check_interval=0)
    except ValueError as e:
        raise UserError(f"--redis {url}: {e}") from None


class Backoff:
    """Exponential backoff between reconnection attempts: 50 ms doubling to ``cap`` seconds; interruptible."""

    def __init__(self, stop: threading.Event | None = None, first: float = 0.05, cap: float = 2.0):
        self.stop, self.first, self.cap = stop or threading.Event(), first, cap
        self.delay = first
        self.down_since: float | None = None

    def wait(self) -> bool:
        """Sleep the next delay; False if stop was set meanwhile."""
        if self.down_since is None:
            self.down_since = time.monotonic()
        stopped = self.stop.wait(self.delay)
        self.delay = min(self.delay * 2, self.cap)
        return not stopped

    def reset(self) -> float:
        """Connected again: returns how long the connection was down (s)."""
        down = 0.0 if self.down_since is None else time.monotonic() - self.down_since
        self.delay, self.down_since = self.first, None
        return down


def id_ms(entry_id) -> int:
    """Milliseconds part of a stream entry id (the Redis server's clock when the entry was added)."""
    s = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(s.split("-", 1)[0])


def last_id(r, stream: str) -> str:
    """Id of the newest entry of ``stream`` ('0-0' when empty or absent)."""
    got = r.xrevrange(stream, "+", "-", count=1)
    return got[0][0].decode() if got else "0-0"
