"""Schema pieces every part of the REST API shares: id and label formats, and the
problem+json error body."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Country = Annotated[str, StringConstraints(pattern=COUNTRY_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128)]


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
