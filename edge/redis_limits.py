"""Limits counted in Redis, so that every edge sharing it enforces one limit (EDGE_REDIS_URL).

The same sliding-window log as edge.limits, in Redis sorted sets scored by Redis's own clock
(TIME, so the edges' clocks do not matter): per subject, admitted requests, finished requests'
tokens (plus their running total) and held concurrency permits. Chosen over GCRA because it
keeps the per-process semantics exactly (a full minute's budget may be spent at once, never
more in any 60 s) and counts tokens that are known only when a request ends; its memory is one
entry per counted event of the last minute (only the limits a subject has are counted, and a
request no limit applies to costs no Redis call). One Lua script checks every subject of a
request and records it only when all admit it, atomically, so N edges cannot overshoot
together. A serving's and its keys' entries share a hash tag, so it also runs on Redis Cluster.

A permit is an entry with an expiry, pushed back every third of EDGE_REDIS_PERMIT_TTL_S while
its request runs: an edge that dies holding permits frees them within that TTL.

Redis down (refused, timed out) fails open: a warning is logged and limits are counted in this
process instead (each edge then enforces the whole limit on its own traffic, as without Redis)
for EDGE_REDIS_RETRY_S before Redis is tried again. Rate limits protect capacity; refusing all
traffic because their counter is unreachable would turn a Redis outage into a platform outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid

import redis.asyncio as redis
from redis.exceptions import RedisError

from edge.limits import (
    WINDOW_S,
    LocalLimiter,
    Permit,
    Subject,
    subjects_of,
    too_many_concurrent,
    too_many_requests,
    too_many_tokens,
)
from services.common.records import Limits

logger = logging.getLogger(__name__)

KEY_PREFIX = "llmserve:limits"
KEYS_PER_SUBJECT = 4

# Shared by the scripts: the server's clock in milliseconds.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: per subject requests, tokens, token total, permits. ARGV: window ms, permit ttl ms,
# permit id, then per subject rpm, tpm, concurrency (0: no limit).
# Returns {} when admitted, else {subject index, kind (1 concurrency, 2 rpm, 3 tpm), retry ms}.
_ACQUIRE = (
    _NOW
    + """
local window, ttl, id = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local subjects = #KEYS / 4
local function oldest(key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if first[2] then return tonumber(first[2]) + window - now end
  return 1000
end
for i = 0, subjects - 1 do
  local requests, tokens, total, permits = KEYS[i*4+1], KEYS[i*4+2], KEYS[i*4+3], KEYS[i*4+4]
  local rpm, tpm, concurrent = tonumber(ARGV[4+i*3]), tonumber(ARGV[5+i*3]), tonumber(ARGV[6+i*3])
  redis.call('ZREMRANGEBYSCORE', requests, '-inf', now - window)
  local expired = redis.call('ZRANGEBYSCORE', tokens, '-inf', now - window)
  if #expired > 0 then
    local amount = 0
    for _, member in ipairs(expired) do
      amount = amount + tonumber(string.match(member, ':(%d+)$'))
    end
    redis.call('ZREMRANGEBYSCORE', tokens, '-inf', now - window)
    if redis.call('DECRBY', total, amount) <= 0 then redis.call('DEL', total) end
  end
  redis.call('ZREMRANGEBYSCORE', permits, '-inf', now)
  if concurrent > 0 and redis.call('ZCARD', permits) >= concurrent then return {i, 1, 1000} end
  if rpm > 0 and redis.call('ZCARD', requests) >= rpm then return {i, 2, oldest(requests)} end
  if tpm > 0 and tonumber(redis.call('GET', total) or '0') >= tpm then
    return {i, 3, oldest(tokens)}
  end
end
-- Only what a limit counts is recorded.
for i = 0, subjects - 1 do
  if tonumber(ARGV[4+i*3]) > 0 then
    redis.call('ZADD', KEYS[i*4+1], now, id)
    redis.call('PEXPIRE', KEYS[i*4+1], window)
  end
  if tonumber(ARGV[6+i*3]) > 0 then
    redis.call('ZADD', KEYS[i*4+4], now + ttl, id)
    redis.call('PEXPIRE', KEYS[i*4+4], ttl)
  end
end
return {}
"""
)

# KEYS: tokens and token total of each subject with a tpm limit, then the permit set of each
# with a concurrency limit. ARGV: window ms, permit id, tokens, subjects with a tpm limit.
_FINISH = (
    _NOW
    + """
local window, id, amount, counted = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if amount > 0 then
  for i = 0, counted - 1 do
    redis.call('ZADD', KEYS[i*2+1], now, id .. ':' .. amount)
    redis.call('INCRBY', KEYS[i*2+2], amount)
    redis.call('PEXPIRE', KEYS[i*2+1], window)
    redis.call('PEXPIRE', KEYS[i*2+2], window)
  end
end
for i = counted * 2 + 1, #KEYS do redis.call('ZREM', KEYS[i], id) end
"""
)

# KEYS: permit sets; ARGV: permit ttl ms, then the permit id held in each set.
_REFRESH = (
    _NOW
    + """
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, 'XX', now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl)
end
"""
)


def _keys(serving_id: int, subject: Subject) -> list[str]:
    # The serving's id as hash tag: one request's keys all live in one Cluster slot.
    base = f"{KEY_PREFIX}:{{serving:{serving_id}}}:{subject.name}"
    return [f"{base}:requests", f"{base}:tokens", f"{base}:tokens-total", f"{base}:permits"]


class RedisPermit:
    def __init__(self, limiter: RedisLimiter, permit_id: str, token_keys, permit_keys):
        self._limiter = limiter
        self.id = permit_id
        # Tokens and token total of each subject with a tpm limit.
        self.token_keys: list[str] = token_keys
        # The permit set of each subject with a concurrency limit.
        self.permit_keys: list[str] = permit_keys
        self._open = True

    async def finish(self, tokens: int) -> None:
        if self._open:
            self._open = False
            await self._limiter.finish(self, tokens)


class _Unlimited:
    """The permit of a request no limit applies to: nothing to count."""

    async def finish(self, tokens: int) -> None:
        pass


UNLIMITED = _Unlimited()


class RedisLimiter:
    def __init__(self, url: str, permit_ttl_s: float, timeout_s: float, retry_s: float):
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._acquire = self._redis.register_script(_ACQUIRE)
        self._finish = self._redis.register_script(_FINISH)
        self._refresh = self._redis.register_script(_REFRESH)
        self._permit_ttl_ms = int(permit_ttl_s * 1000)
        self._retry_s = retry_s
        self._fallback = LocalLimiter()
        # Until then (monotonic), Redis is considered down.
        self._down_until = 0.0
        self._held: dict[str, RedisPermit] = {}
        self._refresher: asyncio.Task | None = None

    def start(self) -> None:
        self._refresher = asyncio.create_task(self._keep_permits())

    async def close(self) -> None:
        if self._refresher:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
        await self._redis.aclose()

    async def acquire(self, limits: Limits, serving_id: int, key_id: str | None) -> Permit:
        subjects = [
            s
            for s in subjects_of(limits, serving_id, key_id)
            if s.requests_per_minute or s.tokens_per_minute or s.max_concurrent
        ]
        if not subjects:
            return UNLIMITED
        if time.monotonic() < self._down_until:
            return await self._fallback.acquire(limits, serving_id, key_id)
        keys = [_keys(serving_id, s) for s in subjects]
        permit = RedisPermit(
            self,
            uuid.uuid4().hex,
            [
                k
                for s, ks in zip(subjects, keys, strict=True)
                if s.tokens_per_minute
                for k in ks[1:3]
            ],
            [ks[3] for s, ks in zip(subjects, keys, strict=True) if s.max_concurrent],
        )
        args: list[int | str] = [int(WINDOW_S * 1000), self._permit_ttl_ms, permit.id]
        for subject in subjects:
            args += [subject.requests_per_minute, subject.tokens_per_minute, subject.max_concurrent]
        try:
            refused = await self._acquire(keys=[k for ks in keys for k in ks], args=args)
        except RedisError as error:
            self._went_down(error)
            return await self._fallback.acquire(limits, serving_id, key_id)
        if refused:
            index, kind, retry_ms = refused
            subject = subjects[index]
            if kind == 1:
                raise too_many_concurrent(subject)
            retry_after_s = max(0, retry_ms) / 1000
            if kind == 2:
                raise too_many_requests(subject, retry_after_s)
            raise too_many_tokens(subject, retry_after_s)
        if permit.permit_keys:
            self._held[permit.id] = permit
        return permit

    async def finish(self, permit: RedisPermit, tokens: int) -> None:
        self._held.pop(permit.id, None)
        if not (permit.permit_keys or (permit.token_keys and tokens)):
            return
        if time.monotonic() < self._down_until:
            return  # its permit entries expire on their own; these tokens go uncounted
        keys = permit.token_keys + permit.permit_keys
        args = [int(WINDOW_S * 1000), permit.id, tokens, len(permit.token_keys) // 2]
        try:
            await self._finish(keys=keys, args=args)
        except RedisError as error:
            self._went_down(error)

    def _went_down(self, error: RedisError) -> None:
        if time.monotonic() >= self._down_until:
            logger.warning(
                "Redis unreachable (%s): counting rate limits in this edge for %.0fs",
                error,
                self._retry_s,
            )
        self._down_until = time.monotonic() + self._retry_s

    async def _keep_permits(self) -> None:
        """Pushes back the expiry of the permits this edge holds, every third of their TTL."""
        while True:
            await asyncio.sleep(self._permit_ttl_ms / 3000)
            held = list(self._held.values())
            if not held:
                continue
            keys, ids = [], []
            for permit in held:
                keys += permit.permit_keys
                ids += [permit.id] * len(permit.permit_keys)
            try:
                await self._refresh(keys=keys, args=[self._permit_ttl_ms, *ids])
            except RedisError as error:
                self._went_down(error)
