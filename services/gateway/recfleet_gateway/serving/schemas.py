"""Request and response models of the request path's routes (they also document the API
in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from ..rest.schemas import Country, Id, Label, Strict

MAX_EVENTS = 500
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "like", "dislike", "share", "watch", "rating", "skip")


# -- recommendations ------------------------------------------------------------------------


class Explanation(BaseModel):
    candidate_score: float
    ranker_contributions: dict[str, float]
    rules: list[str]


class RecommendedItem(BaseModel):
    item_id: str
    rank: int
    score: float
    source: str = Field(description="Candidate source: als, similar, popular, trending, metadata.")
    explanation: Explanation | None = Field(None, description="Only with `explain=true`.")


class Experiment(BaseModel):
    name: str
    variant: str


class Recommendations(BaseModel):
    request_id: str
    user_id: str
    items: list[RecommendedItem]
    next_cursor: str | None
    model_version: str
    served_by: Literal["ranker", "rules", "popular"]
    degraded: list[str]
    cold_start: bool
    experiment: Experiment | None


class ScoredItemOut(BaseModel):
    item_id: str
    rank: int
    score: float
    source: str


class SimilarItems(BaseModel):
    request_id: str
    item_id: str
    items: list[ScoredItemOut]
    model_version: str
    degraded: list[str]


class PopularItems(BaseModel):
    request_id: str
    window: str
    category: str | None
    items: list[ScoredItemOut]


# -- events -----------------------------------------------------------------------------------


class EventIn(Strict):
    """One interaction event. Events are checked one by one: a bad event is reported in
    `rejected` while the rest of the batch is accepted."""

    event_id: str | None = None
    user_id: Id
    item_id: Id
    type: Literal[EVENT_TYPES]  # type: ignore[valid-type]
    value: float | None = None
    timestamp: datetime | None = None
    context: dict[str, Any] = Field(default={})


class EventBatch(Strict):
    events: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_EVENTS, description="1-500 events (see EventIn).")


class Rejection(BaseModel):
    index: int
    error: str


class EventsAccepted(BaseModel):
    accepted: int
    rejected: list[Rejection]
    event_ids: list[str]


# -- catalog and users ----------------------------------------------------------------------------


class ItemIn(Strict):
    title: str = Field("", max_length=1024)
    categories: list[Label] = Field([], max_length=64, description="First = primary category.")
    creator: str = Field("", max_length=256)
    published_at: datetime | None = None
    tags: list[Label] = Field([], max_length=256)
    age_rating: Literal[0, 7, 13, 16, 18] = 0
    regions: list[Country] = Field([], max_length=300, description="ISO 3166 alpha-2; empty = everywhere.")
    # Strict: the schema says boolean, so 0 or "yes" is refused rather than coerced.
    available: bool = Field(True, strict=True)


class ItemWithId(ItemIn):
    item_id: Id


class ItemBatch(Strict):
    items: list[ItemWithId] = Field(min_length=1, max_length=MAX_EVENTS)


class ItemsUpserted(BaseModel):
    upserted: int
    created: int


class ProfileIn(Strict):
    preferred_categories: list[Label] = Field([], max_length=64)
    blocked_categories: list[Label] = Field([], max_length=64)
    liked_items: list[Id] = Field([], max_length=500)
    age: Annotated[int, Field(strict=True, ge=0, le=150)] | None = Field(None, description="Years.")
    country: Country | None = None


class ProfileOut(BaseModel):
    user_id: str
    preferred_categories: list[str]
    blocked_categories: list[str]
    liked_items: list[str]
    age: int | None
    country: str | None


class UserExport(BaseModel):
    user_id: str
    exported_at: datetime
    feature_store: dict[str, Any]
    events: list[dict[str, Any]]


class ErasureReceipt(BaseModel):
    receipt_id: str
    user_id: str
    status: Literal["pending", "completed", "failed"]
    requested_at: datetime
    completed_at: datetime | None
    stores: dict[str, Any]


class Liveness(BaseModel):
    status: Literal["live"]


class Readiness(BaseModel):
    status: Literal["ready"]
    downstreams: int
    not_serving: list[str] = Field(
        description="Downstreams (`name:track`) that do not answer SERVING. They do not affect readiness: "
        "requests that need them get degraded answers (`degraded`, fallbacks) instead."
    )
