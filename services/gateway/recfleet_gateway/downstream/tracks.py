"""Stable and canary tracks of the downstream services, and which one a user gets.

`TrackRouter` picks the track for a user: sticky (a hash of service and user id), and
monotone in the weight, so raising a weight only moves users from stable to canary.
Every pick records the track it used in `tracks_var`, which becomes the response's
`Recfleet-Tracks` header.
"""

from __future__ import annotations

import contextvars
import hashlib

FEATURE_STORE = "feature-store"
RANKING = "ranking"
CANDIDATE_GEN = "candidate-gen"
EVENT_INGEST = "event-ingest"
SERVICES = (CANDIDATE_GEN, RANKING, FEATURE_STORE, EVENT_INGEST)
# Services whose calls may be mirrored to a canary (shadow traffic): the reads. Mirroring
# event-ingest would store every event twice.
MIRRORED = (CANDIDATE_GEN, RANKING, FEATURE_STORE)
STABLE = "stable"
CANARY = "canary"

# service -> track used, for the request being served.
tracks_var: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar("recfleet_tracks", default=None)


def record_track(service: str, track: str) -> None:
    tracks = tracks_var.get()
    if tracks is not None:
        tracks[service] = track


def tracks_header(tracks: dict[str, str]) -> str:
    """`candidate-gen=stable, ranking=canary` in the fleet's fixed service order."""
    return ", ".join(f"{name}={tracks[name]}" for name in SERVICES if name in tracks)


def user_bucket(service: str, user_id: str) -> int:
    """A stable bucket 0..9999 for a user and a service."""
    digest = hashlib.blake2b(f"{service}\x00{user_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000


class TrackRouter:
    """Chooses stable or canary per service and user. A service without a canary target
    always answers stable whatever its weight."""

    def __init__(self, weights: dict[str, int] | None = None, canaries: set[str] | None = None):
        self._weights = dict(weights or {})
        self._canaries = set(canaries or ())

    def has_canary(self, service: str) -> bool:
        return service in self._canaries

    def weight(self, service: str) -> int:
        return self._weights.get(service, 0) if service in self._canaries else 0

    def set_weight(self, service: str, weight: int) -> None:
        if not 0 <= weight <= 100:
            raise ValueError("weight must be within 0..100")
        if weight and service not in self._canaries:
            raise LookupError(f"{service} has no canary target")
        self._weights[service] = weight

    def track_for(self, service: str, user_id: str | None) -> str:
        weight = self.weight(service)
        if weight <= 0:
            return STABLE
        if weight >= 100:
            return CANARY
        return CANARY if user_bucket(service, user_id or "") < weight * 100 else STABLE
