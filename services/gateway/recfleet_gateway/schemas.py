"""Request and response models of the REST API (they also document it in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Country = Annotated[str, StringConstraints(pattern=COUNTRY_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]
MAX_EVENTS = 500
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "like", "dislike", "share", "watch", "rating", "skip")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- errors -----------------------------------------------------------------------------


class FieldError(BaseModel):
    field: str = Field(description="Path of the offending field, e.g. `query.limit` or `body.events[3].type`.")
    message: str


class ProblemDetails(BaseModel):
    """RFC 9457 problem details (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    request_id: str | None
    errors: list[FieldError] | None = None


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
    context: dict[str, Any] = {}


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
    available: bool = True


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
    age: int | None = Field(None, ge=0, le=150, description="Years.")
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


# -- admin --------------------------------------------------------------------------------------


class ApiKeyIn(Strict):
    name: Label
    scopes: list[Literal["recommend:read", "events:write", "catalog:write", "users:admin", "admin"]] = Field(
        min_length=1
    )


class ApiKeyOut(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    created_at: datetime
    revoked_at: datetime | None


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="Shown once; only its hash is stored.")


class ApiKeyList(BaseModel):
    keys: list[ApiKeyOut]


class PromoteIn(Strict):
    version: Label


class ModelVersionOut(BaseModel):
    version: str
    kind: str
    status: str
    artifact_uri: str
    metrics: dict[str, Any]
    created_at: datetime | None
    promoted_at: datetime | None


class ModelList(BaseModel):
    serving: dict[str, str | None]
    versions: list[ModelVersionOut]


class ModelChange(BaseModel):
    kind: str
    serving: str | None
    previous: str | None


class JobOut(BaseModel):
    job_id: str
    name: str
    status: Literal["queued", "running", "succeeded", "failed"]
    output: str
    created_at: datetime
    finished_at: datetime | None


class Liveness(BaseModel):
    status: Literal["live"]


class Readiness(BaseModel):
    status: Literal["ready"]
    downstreams: int
    not_serving: list[str] = Field(
        description="Downstreams (`name:track`) that do not answer SERVING. They do not affect readiness: "
        "requests that need them get degraded answers (`degraded`, fallbacks) instead."
    )


# -- experiments ------------------------------------------------------------------------------


class VariantIn(Strict):
    name: str = Field(description="1-64 characters of [A-Za-z0-9_.:-]; the first variant is the control.")
    share: float = Field(description="Share of users, in (0, 1]; the shares add up to 1.")
    ranker_version: str = Field(
        "serving", description="`rules` (rule formula only), `serving` (the serving ranker) or a ranker version."
    )


class ExperimentIn(Strict):
    name: str = Field(description="1-64 characters of [A-Za-z0-9_.:-].")
    variants: list[VariantIn] = Field(description="2-10 variants.")
    salt: str | None = Field(None, description="Bucketing salt; defaults to the name.")
    surface: str | None = Field(None, description="Only requests for this surface take part; none means all.")


class VariantOut(BaseModel):
    name: str
    share: float
    ranker_version: str


class ExperimentOut(BaseModel):
    name: str
    salt: str
    surface: str | None
    status: Literal["running", "stopped"]
    variants: list[VariantOut]
    created_at: datetime
    stopped_at: datetime | None


class ExperimentList(BaseModel):
    experiments: list[ExperimentOut]


class VariantReadoutOut(BaseModel):
    variant: str
    share: float
    ranker_version: str
    exposures: int
    clicks: int = Field(description="Exposures with at least one attributed click-like event.")
    ctr: float
    lift: float | None = Field(description="CTR minus the control's; null for the control.")
    relative_lift: float | None
    ci95: list[float] | None = Field(description="95% confidence interval of `lift`.")
    p_value: float | None = Field(description="Two-proportion z-test against the control.")


class SampleRatio(BaseModel):
    mismatch: bool = Field(description="The exposure split differs from the shares (chi-square p < 0.001).")
    p_value: float


class ExperimentReadout(BaseModel):
    experiment: str
    status: Literal["running", "stopped"]
    control: str
    variants: list[VariantReadoutOut]
    srm: SampleRatio
