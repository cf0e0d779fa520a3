"""Which tracks made each recommendation list this process served, and the clicks on them:
what a staged rollout's KPI gates compare (recfleet_runtime.rollout's `ListWindow`, which
the control plane judges).

Kept per process and bounded, like the canary analysis of the calls: one insert per list,
and only while some service on the recommendation path has canary traffic. A click is
attributed through the list's `request_id`, sent back by the client in the event's
`context.request_id`, when it lands on the process that served the list.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from recfleet_runtime.rollout import ListWindow

from ..adapters.experiments import CLICK_TYPES
from ..downstream.tracks import TrackRouter, tracks_var
from .recommender import PATH_SERVICES
from .schemas import InteractionEvent, RatingEvent

_CLICKS = frozenset(CLICK_TYPES)


class ServedLists:
    """Records the lists answered and the click-like events received."""

    def __init__(self, window: ListWindow, router: TrackRouter):
        self.window = window
        self.router = router

    def served(self, answer: dict[str, Any]) -> None:
        """A recommendation page answered, with the tracks of the request (`tracks_var`)."""
        if not any(self.router.weight(service) for service in PATH_SERVICES):
            return
        tracks = tracks_var.get()
        if tracks:
            self.window.served(answer["request_id"], tracks, [item["item_id"] for item in answer["items"]])

    def received(self, events: Sequence[InteractionEvent | RatingEvent], refused: Collection[int]) -> None:
        """A batch of events accepted but for the `refused` indexes."""
        if not len(self.window):
            return
        for index, event in enumerate(events):
            if event.type not in _CLICKS or index in refused:
                continue
            request_id = event.context.get("request_id")
            if isinstance(request_id, str):
                self.window.clicked(request_id, event.item_id)
