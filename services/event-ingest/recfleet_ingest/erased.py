"""The in-memory copy of the erased-users list, refreshed every few seconds by its owner."""

from __future__ import annotations

import time


class ErasedUsers:
    """A set of erased user ids with the time it was last loaded."""

    def __init__(self, refresh_seconds: float):
        self.refresh_seconds = refresh_seconds
        self._users: frozenset[str] = frozenset()
        self._loaded_at = float("-inf")

    @property
    def users(self) -> frozenset[str]:
        return self._users

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._users

    def stale(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) - self._loaded_at >= self.refresh_seconds

    def replace(self, users: set[str] | frozenset[str]) -> None:
        self._users = frozenset(users)
        self._loaded_at = time.monotonic()

    def add(self, user_id: str) -> None:
        """Known at once after an erasure in this process, before the next refresh."""
        self._users = self._users | {user_id}
