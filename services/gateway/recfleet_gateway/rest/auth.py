"""API keys: hashed in Postgres with scopes, verified per request, cached briefly.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Unknown, revoked,
expired or missing keys are 401 (with `WWW-Authenticate`); a known key without the
route's scope is 403. The bootstrap admin key from the environment holds every scope
unless it is disabled (a row in Postgres, so every process honours it).

Each process keeps what Postgres answered about a key for `cache_seconds`, so a request
with a key seen moments ago costs no query. That bounds revocation, rotation and
disabling the bootstrap key: the process that makes the change forgets the key at once,
every other process (worker or replica) within `cache_seconds` of it (plus the time of
one lookup, when Postgres is slow). A key's expiry is kept with its cached answer, so no
process serves a key past the expiry it read.

When Postgres is slow or away, a key verified before keeps its last answer: a request
waits at most STALE_WAIT_SECONDS for a fresh one, and once a lookup failed, not at all
until Postgres answers again. A key never seen gets 503 with Retry-After meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import secrets
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import PoolTimeout

from ..adapters.api_keys import ActiveKey, ApiKeyRecord, ApiKeyTable, BootstrapState, Rotation
from .problems import Problem

SCOPES = ("recommend:read", "events:write", "catalog:write", "users:admin", "admin")
BOOTSTRAP_KEY_ID = "bootstrap"
SECRET_PREFIX = "rfk_"
T = TypeVar("T")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's id, name and scopes."""

    key_id: str
    name: str
    scopes: frozenset[str]


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def key_from_headers(authorization: str | None, x_api_key: str | None) -> str | None:
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    if x_api_key:
        return x_api_key.strip() or None
    return None


BOOTSTRAP_PRINCIPAL = Principal(BOOTSTRAP_KEY_ID, "bootstrap", frozenset(SCOPES))
UNKNOWN_KEY = "unknown or revoked API key"
BOOTSTRAP_DISABLED = "bootstrap key disabled: use an API key with the admin scope"
# Verified keys one process remembers; beyond this many (a flood of made-up keys) it
# starts over rather than grow.
MAX_CACHED_KEYS = 10_000
# How long one key lookup may take, connection wait included, before Postgres counts as away.
LOOKUP_SECONDS = 2.0
# How long a request with a key verified before waits for the key's fresh answer.
STALE_WAIT_SECONDS = 0.25


@dataclass(frozen=True, slots=True)
class Verdict:
    """What Postgres answered about a key: who it is and until when (epoch seconds), or
    why it is refused."""

    principal: Principal | None
    refusal: str = UNKNOWN_KEY
    expires: float = math.inf


def verdict_of(key: ActiveKey | None) -> Verdict:
    if key is None:
        return Verdict(None)
    expires = math.inf if key.expires_at is None else key.expires_at.timestamp()
    return Verdict(Principal(key.key_id, key.name, frozenset(key.scopes)), expires=expires)


async def _within(seconds: float, work: Coroutine[Any, Any, T]) -> T:
    """`work`'s result, or TimeoutError after `seconds`. Unlike asyncio.timeout it does not
    wait for the abandoned work to unwind: a query on a Postgres that hangs (frozen,
    partitioned away) is cancelled by a cancel request that itself waits on that Postgres.
    The abandoned work ends on its own; its outcome is dropped."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if task in done:
        return task.result()
    task.add_done_callback(lambda finished: finished.cancelled() or finished.exception())
    task.cancel()
    raise TimeoutError(f"no answer from Postgres within {seconds:g} s")


def admit(verdict: Verdict) -> Principal:
    """The verdict's principal, or a 401 saying why not."""
    if verdict.principal is None:
        raise unauthenticated(verdict.refusal)
    if time.time() >= verdict.expires:
        expired_at = datetime.fromtimestamp(verdict.expires, UTC).isoformat().replace("+00:00", "Z")
        raise unauthenticated(f"this API key expired at {expired_at}")
    return verdict.principal


class ApiKeyStore:
    """API keys (`adapters.api_keys`) plus an in-process cache of verified keys."""

    def __init__(self, table: ApiKeyTable, bootstrap_key: str = "", cache_seconds: float = 5.0):
        self._table = table
        self._bootstrap_hash = hash_key(bootstrap_key) if bootstrap_key else ""
        self._cache_seconds = cache_seconds
        # key hash -> (when the lookup began, what it found)
        self._cache: dict[str, tuple[float, Verdict]] = {}
        # One lookup per key hash at a time: the requests that find a key's entry expired
        # together all wait for the same query instead of each sending one.
        self._lookups: dict[str, asyncio.Future[Verdict]] = {}
        # Bumped by every revocation, rotation and bootstrap change: a lookup that began
        # before one does not cache its answer.
        self._revocations = 0
        # Until when Postgres counts as away (a lookup failed to reach it): meanwhile a key
        # verified before is answered from its entry at once, and one lookup at a time
        # checks in the background whether Postgres is back, so no request waits for a
        # connection that will not come.
        self._away_until = 0.0

    async def verify(self, secret: str) -> Principal:
        """The key's principal; a 401 problem for an unknown, revoked or expired key or a
        disabled bootstrap key."""
        digest = hash_key(secret)
        cached = self._cache.get(digest)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self._cache_seconds:
            return admit(cached[1])
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(digest, done))
        if cached is not None:
            if now < self._away_until:
                return admit(cached[1])
            # A key seen before waits briefly for its fresh answer: when Postgres is slow
            # or going away, its last answer stands meanwhile (the lookup goes on for the
            # next request), so an outage costs a request STALE_WAIT_SECONDS, never the
            # lookup's whole LOOKUP_SECONDS.
            done, _ = await asyncio.wait({lookup}, timeout=STALE_WAIT_SECONDS)
            return admit(lookup.result() if done else cached[1])
        # Shielded: a request that gives up does not cancel the lookup others wait for.
        return admit(await asyncio.shield(lookup))

    async def prime(self) -> None:
        """Read the bootstrap key's state now, so that a process that has seen Postgres
        knows it even if Postgres is away when the key is first used."""
        if self._bootstrap_hash:
            # When it cannot be read now, the key's first use tries again.
            with contextlib.suppress(Problem):
                await self._look_up(self._bootstrap_hash)

    def _is_bootstrap(self, digest: str) -> bool:
        return bool(self._bootstrap_hash) and hmac.compare_digest(digest, self._bootstrap_hash)

    async def _look_up(self, digest: str) -> Verdict:
        began, revocations = time.monotonic(), self._revocations
        try:
            verdict = await _within(LOOKUP_SECONDS, self._query(digest))
        except (psycopg.Error, PoolTimeout, TimeoutError) as error:
            self._away_until = time.monotonic() + self._cache_seconds
            cached = self._cache.get(digest)
            if cached is not None:
                # Postgres is away: a key verified before stays valid (until its expiry)
                # until it is back.
                return cached[1]
            raise Problem(503, "API keys cannot be verified now; retry", headers={"Retry-After": "1"}) from error
        if revocations == self._revocations:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            # Timed from before the query, so the answer is never older than its entry says.
            self._cache[digest] = (began, verdict)
        return verdict

    async def _query(self, digest: str) -> Verdict:
        if self._is_bootstrap(digest):
            state = await self._table.bootstrap_state(wait_seconds=LOOKUP_SECONDS)
            return Verdict(None, BOOTSTRAP_DISABLED) if state.disabled else Verdict(BOOTSTRAP_PRINCIPAL)
        return verdict_of(await self._table.find_active(digest, wait_seconds=LOOKUP_SECONDS))

    def _lookup_done(self, digest: str, lookup: asyncio.Future[Verdict]) -> None:
        if self._lookups.get(digest) is lookup:
            del self._lookups[digest]
        if not lookup.cancelled():
            lookup.exception()  # retrieved here: every waiter may have given up

    def _forget(self, key_hash: str) -> None:
        """Forgotten at once here: the cached answer, and a lookup still in flight (it may
        have read the key before the change) is neither cached nor joined."""
        self._revocations += 1
        self._cache.pop(key_hash, None)
        self._lookups.pop(key_hash, None)

    async def create(
        self, name: str, scopes: list[str], expires_at: datetime | None = None
    ) -> tuple[ApiKeyRecord, str]:
        secret = new_secret()
        record = await self._table.insert(new_key_id(), name, hash_key(secret), sorted(set(scopes)), expires_at)
        return record, secret

    async def list(self) -> list[ApiKeyRecord]:
        return await self._table.list()

    async def revoke(self, key_id: str) -> tuple[ApiKeyRecord, ApiKeyRecord] | None:
        """(the key before, the key as revoked); None for an unknown key. KeyConflict
        (adapters.api_keys) when it would leave nobody able to administer the fleet."""
        revoked = await self._table.revoke(key_id)
        if revoked is None:
            return None
        before, after, key_hash = revoked
        self._forget(key_hash)
        return before, after

    async def rotate(
        self, key_id: str, overlap_seconds: int, expires_at: datetime | None = None
    ) -> tuple[Rotation, str] | None:
        """(the rotation, the new key's secret); None for an unknown key; KeyConflict for a
        revoked, expired or already rotated one."""
        secret = new_secret()
        rotation = await self._table.rotate(key_id, new_key_id(), hash_key(secret), overlap_seconds, expires_at)
        if rotation is None:
            return None
        self._forget(rotation.previous_hash)
        return rotation, secret

    async def bootstrap_state(self) -> BootstrapState:
        return await self._table.bootstrap_state()

    async def disable_bootstrap(self, actor: str) -> tuple[BootstrapState, BootstrapState]:
        """(state before, state now); KeyConflict unless another admin key is usable."""
        change = await self._table.disable_bootstrap(actor)
        if self._bootstrap_hash:
            self._forget(self._bootstrap_hash)
        return change

    async def enable_bootstrap(self) -> tuple[BootstrapState, BootstrapState]:
        change = await self._table.enable_bootstrap()
        if self._bootstrap_hash:
            self._forget(self._bootstrap_hash)
        return change


def new_key_id() -> str:
    return "key_" + secrets.token_hex(8)


def unauthenticated(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="recfleet"'})


async def authenticate(store: ApiKeyStore, authorization: str | None, x_api_key: str | None, scope: str) -> Principal:
    secret = key_from_headers(authorization, x_api_key)
    if secret is None:
        raise unauthenticated("missing API key: send Authorization: Bearer <key> or X-API-Key")
    principal = await store.verify(secret)
    if scope not in principal.scopes:
        raise Problem(403, f"this key lacks the scope {scope!r}", required_scope=scope)
    return principal
