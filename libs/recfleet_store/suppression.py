"""The erasure suppression list (`erased_users`): users whose later events are dropped.

The list outlives the erasure it records, so it keeps no user id: a row holds
`user_hash`, HMAC-SHA256 of the user id under a fleet-wide key (RECFLEET_ERASURE_HASH_KEY),
as hex. The hash is computed here, in Python, by every reader and writer; the key never
reaches Postgres. The key must stay the same for the life of the database: under another
key no stored hash matches, and erased users' events would be kept again.

Rows written before migration 013 still hold the plain id (`user_hash` NULL) until
`recfleet-jobs rehash-suppression` hashes them; the readers here match those rows too.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from typing import Any

import psycopg
from pydantic import AliasChoices, Field, SecretStr

KEY_ENV = "RECFLEET_ERASURE_HASH_KEY"
# The key outside the chart (tests, a bare `python -m` run) when RECFLEET_ERASURE_HASH_KEY is
# unset. Public, so never for real users: the chart and kustomize take the key from a Secret,
# and `make run` generates one under its state directory.
LOCAL_KEY = "recfleet-local-erasure-hash-key"
MIN_KEY_LENGTH = 16

# Every row, hashed or (from before 013) plain.
ROWS_SQL = "SELECT user_hash, user_id FROM erased_users"
# The candidates (parameters from `among_params`) that are on the list, by their plain id.
AMONG_SQL = """
SELECT c.user_id FROM unnest(%(user_ids)s::text[], %(user_hashes)s::text[]) AS c (user_id, user_hash)
WHERE EXISTS (SELECT 1 FROM erased_users e WHERE e.user_hash = c.user_hash)
   OR EXISTS (SELECT 1 FROM erased_users e WHERE e.user_id = c.user_id)
"""


def key_setting() -> Any:
    """The settings field of every service that reads or writes the list (one variable for
    the whole fleet, whatever the service's prefix)."""
    return Field(
        SecretStr(LOCAL_KEY),
        validation_alias=AliasChoices(KEY_ENV),
        min_length=MIN_KEY_LENGTH,
        description="HMAC key of the erasure suppression list; the same on every service and for good",
    )


def user_hash(key: str, user_id: str) -> str:
    """HMAC-SHA256(key, user id) as hex: what the suppression list stores for a user."""
    return hmac.digest(key.encode(), user_id.encode(), "sha256").hex()


def among_params(key: str, user_ids: Iterable[str]) -> dict[str, list[str]]:
    """AMONG_SQL's parameters: the candidates' ids and, in the same order, their hashes."""
    ids = list(user_ids)
    return {"user_ids": ids, "user_hashes": [user_hash(key, user) for user in ids]}


def hashes_of(key: str, rows: Iterable[tuple[str | None, str | None]]) -> set[str]:
    """The hashes of `(user_hash, user_id)` rows (ROWS_SQL): plain rows are hashed here."""
    found: set[str] = set()
    for hashed, plain in rows:
        if hashed is not None:
            found.add(hashed)
        elif plain is not None:
            found.add(user_hash(key, plain))
    return found


class SuppressedUsers:
    """Membership of user ids in a loaded copy of the list (a set of hashes)."""

    def __init__(self, key: str, hashes: Iterable[str] = ()):
        self._key = key
        self.hashes = frozenset(hashes)

    def __repr__(self) -> str:
        return f"SuppressedUsers({len(self.hashes)} hashes)"

    def __len__(self) -> int:
        return len(self.hashes)

    def __contains__(self, user_id: object) -> bool:
        # An empty list (the usual case) costs no hashing.
        return bool(self.hashes) and isinstance(user_id, str) and user_hash(self._key, user_id) in self.hashes

    def with_user(self, user_id: str) -> SuppressedUsers:
        """A copy that also holds `user_id`."""
        return SuppressedUsers(self._key, self.hashes | {user_hash(self._key, user_id)})

    def among(self, user_ids: Iterable[str]) -> set[str]:
        """The ids of `user_ids` that are on the list."""
        if not self.hashes:
            return set()
        return {user for user in set(user_ids) if user_hash(self._key, user) in self.hashes}


def load(conn: psycopg.Connection, key: str) -> SuppressedUsers:
    """The whole list, read over a blocking connection."""
    return SuppressedUsers(key, hashes_of(key, conn.execute(ROWS_SQL)))


def rehash_plain_rows(conn: psycopg.Connection, key: str) -> int:
    """Hash the rows still holding a plain user id (written before migration 013) and clear
    the id; returns how many. One transaction that waits for sink batches in flight and
    holds off new ones and new erasures (plain reads go on), so no batch sees the list
    half rewritten. Idempotent."""
    with conn.transaction():
        conn.execute("LOCK TABLE erased_users IN EXCLUSIVE MODE")
        plain = conn.execute(
            "SELECT user_id, receipt_id, requested_at FROM erased_users WHERE user_id IS NOT NULL"
        ).fetchall()
        for user_id, receipt_id, requested_at in plain:
            conn.execute("DELETE FROM erased_users WHERE user_id = %s", (user_id,))
            # A user erased again since has a hashed row already: that one stays.
            conn.execute(
                "INSERT INTO erased_users (user_hash, receipt_id, requested_at) VALUES (%s, %s, %s)"
                " ON CONFLICT (user_hash) DO NOTHING",
                (user_hash(key, user_id), receipt_id, requested_at),
            )
    return len(plain)
