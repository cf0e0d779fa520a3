"""Request and response models of the request path's routes (they also document the API
in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Discriminator, Field, Tag

from ..rest.schemas import Country, FiniteNumber, Id, JsonInteger, Label, Strict, Text, Timestamp

MAX_EVENTS = 500
INTERACTION_TYPES = ("view", "click", "add_to_cart", "purchase", "like", "dislike", "share", "watch", "skip")
EVENT_TYPES = (*INTERACTION_TYPES, "rating")


# -- recommendations ------------------------------------------------------------------------


class Explanation(BaseModel):
    candidate_score: float
    ranker_contributions: dict[str, float]
    rules: list[str]
    source_scores: dict[str, float] = Field(
        {},
        description="Each candidate source's own score for the item, e.g. "
        '`{"als": 0.81, "ease": 0.12}` for an item retrieval fused from ALS and EASE; '
        "empty when its candidates came from one source.",
    )


class CatalogAttributes(BaseModel):
    """An item's catalog attributes, inline on list items: each only when `fields` names it
    (never without `fields`). An item without a catalog entry gets the default shown; one
    whose attributes could not be read comes without them (`degraded` says
    `item-attributes-unavailable`)."""

    title: str = Field("", description="With `fields=title`.")
    categories: list[str] = Field([], description="With `fields=categories`; the first is the primary category.")
    creator: str = Field("", description="With `fields=creator`.")
    published_at: datetime | None = Field(None, description="With `fields=published_at`; null when unknown.")
    tags: list[str] = Field([], description="With `fields=tags`.")
    age_rating: Literal[0, 7, 13, 16, 18] = Field(0, description="With `fields=age_rating`: minimum viewer age.")
    regions: list[str] = Field(
        [], description="With `fields=regions`: ISO 3166 alpha-2 codes where it is available; empty = everywhere."
    )
    available: bool = Field(True, description="With `fields=available`.")


class RankedFields(BaseModel):
    item_id: str
    rank: int
    score: float
    source: str = Field(
        description="Candidate source: als, ease, als+ease (proposed by both), similar, popular, trending, metadata."
    )
    explanation: Explanation | None = Field(None, description="Only with `explain=true`.")


# The attributes come first among the bases so that they come last in the item's schema.
class RecommendedItem(CatalogAttributes, RankedFields):
    """A ranked item; with `fields`, its catalog attributes inline (defaults for an item
    without a catalog entry)."""


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


class ScoredFields(BaseModel):
    item_id: str
    rank: int
    score: float
    source: str


class ScoredItemOut(CatalogAttributes, ScoredFields):
    """A listed item; with `fields`, its catalog attributes inline (defaults for an item
    without a catalog entry)."""


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
    degraded: list[str] = Field(
        [], description="Only with `fields`: `item-attributes-unavailable` when attributes could not be read."
    )


# -- events -----------------------------------------------------------------------------------

# A canonical UUID, hex digits in either case (the idempotency key of an event).
UUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
RATING_MIN = 0.5
RATING_MAX = 5.0


class EventFields(Strict):
    event_id: str | None = Field(
        None, pattern=UUID_PATTERN, description="UUID (idempotency key); generated when absent."
    )
    user_id: Id
    item_id: Id
    timestamp: Timestamp | None = Field(None, description="When it happened (RFC 3339 with an offset); default: now.")
    context: dict[str, Any] = Field(
        default={},
        description='Free JSON object, e.g. `{"request_id": ...}` of the list that showed the item (attribution).',
    )


class InteractionEvent(EventFields):
    """Any event but a rating: `value` is optional."""

    type: Literal[INTERACTION_TYPES]  # type: ignore[valid-type]
    value: FiniteNumber | None = Field(None, description="e.g. seconds watched or the price paid.")


class RatingEvent(EventFields):
    """A rating carries its value."""

    type: Literal["rating"]
    value: FiniteNumber = Field(ge=RATING_MIN, le=RATING_MAX, description="Stars, 0.5-5.")


def _event_kind(event: Any) -> str | None:
    kind = event.get("type") if isinstance(event, dict) else getattr(event, "type", None)
    return "rating" if kind == "rating" else "event" if kind in INTERACTION_TYPES else None


# The union is told apart by `type` (each kind's schema names its types), with no OpenAPI
# `discriminator`: schemathesis 4.32.5 builds schema-valid bodies from one and counts them
# as breaking the schema. An error's path names the kind: `events[3].rating.value`.
EventIn = Annotated[
    Annotated[InteractionEvent, Tag("event")] | Annotated[RatingEvent, Tag("rating")],
    Discriminator(
        _event_kind,
        custom_error_type="event_type",
        custom_error_message=f"type: must be one of {', '.join(EVENT_TYPES)}",
    ),
]


class EventBatch(Strict):
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS, description="1-500 events.")


class Rejection(BaseModel):
    index: int
    error: str


class EventsAccepted(BaseModel):
    accepted: int
    rejected: list[Rejection]
    event_ids: list[str]


# -- catalog and users ----------------------------------------------------------------------------


class ItemIn(Strict):
    title: Text = Field("", max_length=1000)
    categories: list[Label] = Field([], max_length=64, description="First = primary category.")
    creator: Text = Field("", max_length=256)
    published_at: Timestamp | None = None
    tags: list[Label] = Field([], max_length=100)
    age_rating: Annotated[Literal[0, 7, 13, 16, 18], JsonInteger] = 0
    regions: list[Country] = Field([], max_length=300, description="ISO 3166 alpha-2; empty = everywhere.")
    # Strict: the schema says boolean, so 0 or "yes" is refused rather than coerced.
    available: bool = Field(True, strict=True)


class ItemWithId(ItemIn):
    item_id: Id


class ItemBatch(Strict):
    items: list[ItemWithId] = Field(
        min_length=1, max_length=MAX_EVENTS, description="1-500 items; of two with one id, the later one is kept."
    )


class ItemsUpserted(BaseModel):
    upserted: int
    created: int


class ProfileIn(Strict):
    preferred_categories: list[Label] = Field([], max_length=64)
    blocked_categories: list[Label] = Field([], max_length=64)
    liked_items: list[Id] = Field([], max_length=100)
    # Bounds before JsonInteger: on the validator's output, in the schema as well.
    age: Annotated[int, Field(strict=True, ge=0, le=150), JsonInteger] | None = Field(None, description="Years.")
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
