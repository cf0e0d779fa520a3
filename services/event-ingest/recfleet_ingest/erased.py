"""The in-memory copy of the erased-users list, refreshed every few seconds by its owner.

The list holds keyed hashes (recfleet_store.suppression), so a user id is looked up by its
hash under the fleet's key."""

from __future__ import annotations

import time
from collections.abc import Iterable

from recfleet_store.suppression import SuppressedUsers


class ErasedUsers:
    """The erased users' hashes with the time they were last loaded; `user_id in erased`."""

    def __init__(self, refresh_seconds: float, hash_key: str):
        self.refresh_seconds = refresh_seconds
        self.hash_key = hash_key
        self._users = SuppressedUsers(hash_key)
        self._loaded_at = float("-inf")

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._users

    def stale(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self._loaded_at >= self.refresh_seconds

    def replace(self, hashes: Iterable[str]) -> None:
        self._users = SuppressedUsers(self.hash_key, hashes)
        self._loaded_at = time.monotonic()

    def add(self, user_id: str) -> None:
        """Known at once after an erasure in this process, before the next refresh."""
        self._users = self._users.with_user(user_id)
