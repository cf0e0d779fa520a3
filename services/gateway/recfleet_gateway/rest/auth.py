"""API keys: hashed in Postgres with scopes, verified per request, cached briefly.

A key is sent as `Authorization: Bearer <key>` or `X-API-Key: <key>`. Unknown or
missing keys are 401 (with `WWW-Authenticate`); a known key without the route's scope
is 403. The bootstrap admin key from the environment holds every scope.

Each process keeps what Postgres answered about a key for `cache_seconds`, so a request
with a key seen moments ago costs no query. That bounds revocation: the process that
revokes a key forgets it at once, every other process (worker or replica) within
`cache_seconds` of the revocation.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import psycopg
from psycopg_pool import PoolTimeout

from ..adapters.api_keys import ApiKeyRecord, ApiKeyTable
from .problems import Problem

SCOPES = ("recommend:read", "events:write", "catalog:write", "users:admin", "admin")
BOOTSTRAP_KEY_ID = "bootstrap"
SECRET_PREFIX = "rfk_"


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
# Verified keys one process remembers; beyond this many (a flood of made-up keys) it
# starts over rather than grow.
MAX_CACHED_KEYS = 10_000


class ApiKeyStore:
    """API keys (`adapters.api_keys`) plus an in-process cache of verified keys."""

    def __init__(self, table: ApiKeyTable, bootstrap_key: str = "", cache_seconds: float = 5.0):
        self._table = table
        self._bootstrap_hash = hash_key(bootstrap_key) if bootstrap_key else ""
        self._cache_seconds = cache_seconds
        # key hash -> (when the lookup began, the key's principal or None when unknown)
        self._cache: dict[str, tuple[float, Principal | None]] = {}
        # One lookup per key hash at a time: the requests that find a key's entry expired
        # together all wait for the same query instead of each sending one.
        self._lookups: dict[str, asyncio.Future[Principal | None]] = {}
        # Bumped by every revocation: a lookup that began before one does not cache its answer.
        self._revocations = 0

    async def verify(self, secret: str) -> Principal | None:
        digest = hash_key(secret)
        if self._bootstrap_hash and hmac.compare_digest(digest, self._bootstrap_hash):
            return BOOTSTRAP_PRINCIPAL
        cached = self._cache.get(digest)
        if cached is not None and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        lookup = self._lookups.get(digest)
        if lookup is None:
            lookup = asyncio.ensure_future(self._look_up(digest))
            self._lookups[digest] = lookup
            lookup.add_done_callback(lambda done: self._lookup_done(digest, done))
        # Shielded: a request that gives up does not cancel the lookup others wait for.
        return await asyncio.shield(lookup)

    async def _look_up(self, digest: str) -> Principal | None:
        began, revocations = time.monotonic(), self._revocations
        try:
            key = await self._table.find_active(digest, wait_seconds=2.0)
        except (psycopg.Error, PoolTimeout) as error:
            cached = self._cache.get(digest)
            if cached is not None:
                # Postgres is away: a key verified before stays valid until it is back.
                return cached[1]
            raise Problem(503, "API keys cannot be verified now; retry", headers={"Retry-After": "1"}) from error
        principal = Principal(key.key_id, key.name, frozenset(key.scopes)) if key else None
        if revocations == self._revocations:
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
            # Timed from before the query, so the answer is never older than its entry says.
            self._cache[digest] = (began, principal)
        return principal

    def _lookup_done(self, digest: str, lookup: asyncio.Future[Principal | None]) -> None:
        if self._lookups.get(digest) is lookup:
            del self._lookups[digest]
        if not lookup.cancelled():
            lookup.exception()  # retrieved here: every waiter may have given up

    async def create(self, name: str, scopes: list[str]) -> tuple[ApiKeyRecord, str]:
        secret = new_secret()
        key_id = "key_" + secrets.token_hex(8)
        record = await self._table.insert(key_id, name, hash_key(secret), sorted(set(scopes)))
        return record, secret

    async def list(self) -> list[ApiKeyRecord]:
        return await self._table.list()

    async def revoke(self, key_id: str) -> ApiKeyRecord | None:
        revoked = await self._table.revoke(key_id)
        if revoked is None:
            return None
        record, key_hash = revoked
        # Forgotten at once here: the cached answer, and a lookup still in flight (it may
        # have read the key before the revocation) is neither cached nor joined.
        self._revocations += 1
        self._cache.pop(key_hash, None)
        self._lookups.pop(key_hash, None)
        return record


def unauthenticated(detail: str) -> Problem:
    return Problem(401, detail, headers={"WWW-Authenticate": 'Bearer realm="recfleet"'})


async def authenticate(store: ApiKeyStore, authorization: str | None, x_api_key: str | None, scope: str) -> Principal:
    secret = key_from_headers(authorization, x_api_key)
    if secret is None:
        raise unauthenticated("missing API key: send Authorization: Bearer <key> or X-API-Key")
    principal = await store.verify(secret)
    if principal is None:
        raise unauthenticated("unknown or revoked API key")
    if scope not in principal.scopes:
        raise Problem(403, f"this key lacks the scope {scope!r}", required_scope=scope)
    return principal
