"""Schema pieces every part of the REST API shares: id, label, text, number and timestamp
formats, and the problem+json error body.

Types are strict and say in the schema everything they check: a JSON `true` is not the
number 1, `3` is not a string, a number is not a timestamp. Every text that is stored
refuses NUL, which Postgres cannot hold.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints
from pydantic_core import PydanticCustomError

ID_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
COUNTRY_PATTERN = r"^[A-Z]{2}$"
# No NUL: free text (titles, names).
TEXT_PATTERN = r"^[^\x00]*$"
# No control character (C0 or C1), and at least one that is not white space (labels are
# stored trimmed).
LABEL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\s\x00-\x1f\x7f-\x9f][^\x00-\x1f\x7f-\x9f]*$"
# RFC 3339 `date-time` as JSON Schema means it: a date, `T`, a time and an offset.
RFC3339 = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:[Zz]|[+-][0-9]{2}:[0-9]{2})"
)

Id = Annotated[str, StringConstraints(pattern=ID_PATTERN)]
Country = Annotated[str, StringConstraints(pattern=COUNTRY_PATTERN)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=LABEL_PATTERN)]
Text = Annotated[str, StringConstraints(pattern=TEXT_PATTERN)]


def _json_integer(value: Any) -> Any:
    """JSON Schema's `integer` is a number without a fraction, `3.0` included; a boolean is
    none (Python's bool is an int, which pydantic would read as 0 or 1)."""
    if isinstance(value, bool):
        raise PydanticCustomError("int_type", "Input should be a valid integer, not a boolean")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _rfc3339(value: Any) -> Any:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        raise PydanticCustomError(
            "datetime_type", "Input should be an RFC 3339 date-time with an offset, e.g. 2026-01-01T12:00:00Z"
        )
    return value


# Also for an integer `Literal` (a before-validator: pydantic reads `false` as 0 there).
JsonInteger = BeforeValidator(_json_integer)
Integer = Annotated[int, Field(strict=True), JsonInteger]
# A JSON number: an integer or a fraction, never a boolean or a string (nor NaN or an
# infinity, which JSON cannot spell).
FiniteNumber = Annotated[float, Field(strict=True, allow_inf_nan=False)]
Timestamp = Annotated[AwareDatetime, BeforeValidator(_rfc3339)]


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
