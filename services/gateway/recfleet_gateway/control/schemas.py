"""Request and response models of the control plane's routes (they also document the
API in OpenAPI)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..experiments import MAX_VARIANTS, NAME_RE
from ..rest.schemas import Label, Strict

NAME_PATTERN = NAME_RE.pattern

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


# -- experiments ------------------------------------------------------------------------------


class VariantIn(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="1-64 characters of [A-Za-z0-9_.:-]; the first is the control.")
    share: float = Field(strict=True, gt=0, le=1, description="Share of users, in (0, 1]; the shares add up to 1.")
    ranker_version: str = Field(
        "serving", description="`rules` (rule formula only), `serving` (the serving ranker) or a ranker version."
    )


class ExperimentIn(Strict):
    name: str = Field(pattern=NAME_PATTERN, description="1-64 characters of [A-Za-z0-9_.:-].")
    variants: list[VariantIn] = Field(min_length=2, max_length=MAX_VARIANTS, description="2-10 variants.")
    salt: str | None = Field(None, min_length=1, max_length=128, description="Bucketing salt; defaults to the name.")
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
