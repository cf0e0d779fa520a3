"""Request and response models of the control plane's routes (they also document the
API in OpenAPI)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, Self

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic.json_schema import JsonDict

from ..experiments import MAX_VARIANTS, NAME_RE, RANKER_RE
from ..rest.schemas import Integer, JsonInteger, Label, Strict, Text
from .audit import ACTIONS

NAME_PATTERN = NAME_RE.pattern

# -- admin --------------------------------------------------------------------------------------


# A key lives at most this long (a bound on `ttl_seconds`): ten years.
MAX_KEY_TTL_SECONDS = 10 * 365 * 86_400
# Rotation keeps the old key working for at most a week.
MAX_OVERLAP_SECONDS = 7 * 86_400


# What `KeyExpiry._one_of` refuses, as the schema states it: both expiries given (a null
# is not given).
BOTH_EXPIRIES: JsonDict = {
    "required": ["expires_at", "ttl_seconds"],
    "properties": {"expires_at": {"type": "string"}, "ttl_seconds": {"type": "integer"}},
}


class KeyExpiry(Strict):
    """When a key stops working: at `expires_at` or `ttl_seconds` from now; never, when
    neither is given."""

    model_config = ConfigDict(json_schema_extra={"not": BOTH_EXPIRIES})

    expires_at: AwareDatetime | None = Field(
        None, description="RFC 3339 time with an offset, in the future; not with `ttl_seconds`."
    )
    ttl_seconds: Annotated[int, Field(strict=True, gt=0, le=MAX_KEY_TTL_SECONDS), JsonInteger] | None = Field(
        None, description="Seconds from now; not with `expires_at`."
    )

    @field_validator("expires_at")
    @classmethod
    def _in_the_future(cls, value: datetime | None) -> datetime | None:
        if value is not None and value <= datetime.now(UTC):
            raise ValueError("must be in the future")
        return value

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if self.expires_at is not None and self.ttl_seconds is not None:
            raise ValueError("give expires_at or ttl_seconds, not both")
        return self

    def expiry(self) -> datetime | None:
        if self.ttl_seconds is not None:
            return datetime.now(UTC) + timedelta(seconds=self.ttl_seconds)
        return self.expires_at


class ApiKeyIn(KeyExpiry):
    name: Label
    scopes: list[Literal["recommend:read", "events:write", "catalog:write", "users:admin", "admin"]] = Field(
        min_length=1
    )


class RotateIn(KeyExpiry):
    """The old key keeps working for `overlap_seconds`; `expires_at` / `ttl_seconds` set
    the new key's expiry (none by default)."""

    overlap_seconds: Integer = Field(
        3600,
        ge=0,
        le=MAX_OVERLAP_SECONDS,
        description="Seconds the old key keeps working (never past an expiry it already has).",
    )


class ApiKeyOut(BaseModel):
    key_id: str
    name: str
    scopes: list[str]
    status: Literal["active", "revoked", "expired"]
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = Field(description="When the key stops working; null: never.")
    rotated_to: str | None = Field(description="The key that replaced this one, when it was rotated.")


class ApiKeyCreated(ApiKeyOut):
    secret: str = Field(description="Shown once; only its hash is stored.")


class ApiKeyRotated(ApiKeyCreated):
    """The new key (with its secret, shown once) and the old one, now expiring."""

    previous: ApiKeyOut


class ApiKeyList(BaseModel):
    keys: list[ApiKeyOut]


class BootstrapKeyOut(BaseModel):
    disabled: bool = Field(description="Whether the environment's bootstrap admin key is refused.")
    disabled_at: datetime | None
    disabled_by: str | None = Field(description="Key id that disabled it.")


# -- audit --------------------------------------------------------------------------------------

AuditAction = Literal[ACTIONS]  # type: ignore[valid-type]


class AuditEntryOut(BaseModel):
    audit_id: int
    created_at: datetime
    key_id: str = Field(description="The acting key (`bootstrap` for the environment's key).")
    key_name: str
    request_id: str | None = Field(description="The request's `X-Request-ID`.")
    action: AuditAction
    target: str = Field(description="What the action changed: a service, model kind, key id, user id, ...")
    before: dict[str, Any] | None = Field(description="The state it changed, before; null when there was none.")
    after: dict[str, Any] | None = Field(description="The state it changed, after (never a secret).")


class AuditPage(BaseModel):
    entries: list[AuditEntryOut] = Field(description="Newest first.")
    next_before: int | None = Field(description="Pass as `before` for the next (older) page; null on the last page.")


class PromoteIn(Strict):
    version: Label
    force: bool = Field(
        False,
        strict=True,
        description="Promote even when the gates refuse (no index for the fleet's shards, validation metrics"
        " too far below the serving version's); the audit log records it.",
    )


class ModelVersionOut(BaseModel):
    version: str
    kind: str
    status: str
    artifact_uri: str
    metrics: dict[str, Any]
    created_at: datetime | None
    promoted_at: datetime | None
    index: dict[str, Any] | None = Field(
        description="ALS: the FAISS index build-index recorded (`shard_count`, `index_type`, `dimension`,"
        " `item_count`, `built_at`); null when none is built."
    )
    refusals: list[str] = Field(description="Why promoting this version now would be refused; empty: it would not.")


class ModelList(BaseModel):
    serving: dict[str, str | None]
    versions: list[ModelVersionOut]


class ModelChange(BaseModel):
    kind: str
    serving: str | None
    previous: str | None
    forced: bool = Field(False, description="Promoted with `force`.")
    overridden: list[str] = Field(default_factory=list, description="The gates' refusals a forced promotion went past.")


class JobOut(BaseModel):
    job_id: str
    name: str
    status: Literal["queued", "running", "succeeded", "failed"]
    output: str
    created_at: datetime
    finished_at: datetime | None


# -- experiments ------------------------------------------------------------------------------


class VariantIn(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="1-64 characters of [A-Za-z0-9_.:-]; the first is the control.")
    share: float = Field(strict=True, gt=0, le=1, description="Share of users, in (0, 1]; the shares add up to 1.")
    ranker_version: str = Field(
        "serving",
        pattern=RANKER_RE.pattern,
        description="`rules` (rule formula only), `serving` (the serving ranker) or a ranker version.",
    )


class ExperimentIn(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="1-64 characters of [A-Za-z0-9_.:-].")
    variants: list[VariantIn] = Field(min_length=2, max_length=MAX_VARIANTS, description="2-10 variants.")
    salt: Text | None = Field(None, min_length=1, max_length=128, description="Bucketing salt; defaults to the name.")
    surface: str | None = Field(
        None, pattern=NAME_PATTERN, description="Only requests for this surface take part; none means all."
    )


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


# -- fleet and catalog (operations) -----------------------------------------------------------


class EndpointStatus(BaseModel):
    name: str = Field(description="The downstream: `ranking`, `candidate-gen-shard-0`, ...")
    target: str = Field(description="Its gRPC target.")
    serving: bool = Field(
        description="Answers SERVING to the gRPC health check (cached like readiness, for"
        " `RECFLEET_GATEWAY_READINESS_CACHE_SECONDS`)."
    )
    breaker: Literal["closed", "open", "half_open"] = Field(
        description="This replica's circuit breaker for it: `open` means calls are not even sent."
    )


class RecentCalls(BaseModel):
    """This replica's calls to the track over the canary analysis window."""

    requests: int
    errors: int = Field(description="Calls that failed the way an unhealthy dependency does (unavailable, deadline).")
    error_rate: float
    p99_ms: float


class TrackStatus(BaseModel):
    track: Literal["stable", "canary"]
    endpoints: list[EndpointStatus]
    recent: RecentCalls


class ServiceStatus(BaseModel):
    service: str
    weight: int = Field(description="Canary weight in force on this replica (0 without a canary).")
    tracks: list[TrackStatus] = Field(description="Stable first; canary when the service has one.")


class FleetStatus(BaseModel):
    window_seconds: float = Field(description="The window of `recent`.")
    services: list[ServiceStatus]


class CatalogItemOut(BaseModel):
    item_id: str
    title: str = Field(description='Empty ("") for an item the catalog does not hold.')
    categories: list[str] = Field(description="The first is the primary one.")
    creator: str


class CatalogItems(BaseModel):
    items: list[CatalogItemOut] = Field(description="One per requested id, in request order.")
