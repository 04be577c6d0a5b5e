"""Rate limits kept in the cache (Redis), and the cache backend that lets them fail open.

Our own limits are fixed-window counters: one Redis INCR per request, so they are cheap enough
for the machine API too. Sign-in, sign-up and password reset are limited by allauth
(ACCOUNT_RATE_LIMITS); its counters live in the same cache.

    decision = ratelimit.hit(request, "invitation")           # the client IP, RATE_LIMITS
    decision = ratelimit.hit(f"key:{key.pk}", "api", "600/m") # any string, an explicit limit
    if not decision.allowed:
        return ratelimit.too_many_requests(request, decision) # or a JSON 429 of your own
                                                              # with Retry-After: retry_after

Limits are written as allauth writes them: "<count>/<period>", the period a number of
seconds, minutes, hours or days ("20/m", "10/10m", "1000/h"). A limit that is not passed is
read from settings.RATE_LIMITS[action].

Both the helpers and the cache backend fail open: when Redis is down or does not answer,
every request is allowed. A rate limit is not worth a 500, and everything else keeps working
without Redis (sessions are in Postgres).
"""

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from functools import wraps

from django.conf import settings
from django.core.cache import cache
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.redis import RedisCache
from django.shortcuts import render
from redis.exceptions import RedisError

from core.http import client_ip

logger = logging.getLogger(__name__)

PERIODS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Limit:
    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> "Limit":
        count, _, period = text.strip().partition("/")
        unit = period[-1:]
        if unit not in PERIODS:
            raise ValueError(f"Bad rate limit {text!r}: the period ends in s, m, h or d.")
        return cls(count=int(count), seconds=int(period[:-1] or 1) * PERIODS[unit])


@dataclass(frozen=True)
class Decision:
    allowed: bool
    # Seconds until the current window ends (when a refused caller may try again); 0 if allowed.
    retry_after: int = 0


ALLOWED = Decision(allowed=True)


def hit(who, action: str, limit: str | None = None) -> Decision:
    """Count one attempt of `who` at `action`; refused once the window's count is used up.

    `who` is a request (counted per client IP) or any string (an API key id, an email).
    """
    return _count(who, action, limit, record=True)


def peek(who, action: str, limit: str | None = None) -> Decision:
    """Whether `who` is still within the limit, counting nothing (e.g. failed attempts:
    peek before the work, hit only when the attempt fails)."""
    return _count(who, action, limit, record=False)


def too_many_requests(request, decision: Decision):
    """The 429 page, with Retry-After."""
    response = render(
        request,
        "429.html",
        {"retry_after_minutes": math.ceil(decision.retry_after / 60)},
        status=429,
    )
    response["Retry-After"] = str(decision.retry_after)
    return response


def per_ip(action: str, limit: str | None = None):
    """View decorator: every request (any method) counts against the client IP's limit."""

    def decorator(view):
        @wraps(view)
        def wrapped(request, *args, **kwargs):
            decision = hit(request, action, limit)
            if not decision.allowed:
                return too_many_requests(request, decision)
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def _identity(who) -> str:
    if isinstance(who, str):
        return who
    # The audit log's client address (TRUSTED_PROXY_COUNT).
    return f"ip:{client_ip(who)}"


def _count(who, action: str, limit: str | None, *, record: bool) -> Decision:
    rule = Limit.parse(limit or settings.RATE_LIMITS[action])
    now = time.time()
    window = int(now // rule.seconds)
    # Hashed: no IP addresses or keys in Redis, and a key of fixed length.
    digest = hashlib.sha256(_identity(who).encode()).hexdigest()[:32]
    key = f"rl:{action}:{rule.seconds}:{window}:{digest}"
    try:
        if record:
            cache.add(key, 0, timeout=rule.seconds + 1)
            used = cache.incr(key)
            allowed = used <= rule.count
        else:
            allowed = cache.get(key, 0) < rule.count
    except Exception as error:  # noqa: BLE001 - whatever the cache raises, fail open
        logger.warning("Rate limit %s not checked, the cache failed: %r", action, error)
        return ALLOWED
    if allowed:
        return ALLOWED
    return Decision(allowed=False, retry_after=max(1, math.ceil((window + 1) * rule.seconds - now)))


class FailOpenRedisCache(RedisCache):
    """Django's Redis cache that behaves as an empty cache which forgets writes while Redis
    is unreachable or slow, instead of raising.

    The cache holds rate-limit counters only, so a dead Redis means "no limits" rather than
    a 500 on every sign-in (allauth calls the cache directly). `add` reports success so that
    allauth's cache lock is taken and its limits pass. Short socket timeouts keep a hung Redis
    from holding requests, and after a failure Redis is left alone for RETRY_SECONDS.

    Except for keys named in the OPTIONS' FAIL_CLOSED_ADD_PREFIXES: there `add` is a one-time
    marker (a two-factor code already used), and reporting success while Redis is away would
    accept the same code twice, so it reports failure.
    """

    RETRY_SECONDS = 5
    # Per server, shared by the per-thread instances of this process: when Redis is left alone.
    _down_until: dict[str, float] = {}

    def __init__(self, server, params):
        options = dict(params.get("OPTIONS") or {})
        self._fail_closed_prefixes = tuple(options.pop("FAIL_CLOSED_ADD_PREFIXES", ()))
        super().__init__(server, {**params, "OPTIONS": options})
        self._options = {"socket_connect_timeout": 0.5, "socket_timeout": 0.5, **self._options}
        self._server_key = ",".join(self._servers)

    def _call(self, fallback, method, *args, **kwargs):
        server = self._server_key
        if time.monotonic() < self._down_until.get(server, 0.0):
            return fallback
        try:
            return method(*args, **kwargs)
        except (RedisError, OSError) as error:
            self._down_until[server] = time.monotonic() + self.RETRY_SECONDS
            logger.warning("Cache unavailable, rate limits are off for now: %r", error)
            return fallback

    def add(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        fail_closed = bool(self._fail_closed_prefixes) and key.startswith(
            self._fail_closed_prefixes
        )
        return self._call(not fail_closed, super().add, key, value, timeout, version)

    def get(self, key, default=None, version=None):
        return self._call(default, super().get, key, default, version)

    def set(self, key, value, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call(None, super().set, key, value, timeout, version)

    def touch(self, key, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call(False, super().touch, key, timeout, version)

    def delete(self, key, version=None):
        return self._call(False, super().delete, key, version)

    def get_many(self, keys, version=None):
        return self._call({}, super().get_many, keys, version)

    def has_key(self, key, version=None):
        return self._call(False, super().has_key, key, version)

    def incr(self, key, delta=1, version=None):
        return self._call(delta, super().incr, key, delta, version)

    def set_many(self, data, timeout=DEFAULT_TIMEOUT, version=None):
        return self._call([], super().set_many, data, timeout, version)

    def delete_many(self, keys, version=None):
        return self._call(None, super().delete_many, keys, version)

    def clear(self):
        return self._call(False, super().clear)
