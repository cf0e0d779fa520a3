"""`GET /v1/recommendations`, `GET /v1/items/{item_id}/similar`, `GET /v1/popular`."""

from __future__ import annotations

import functools
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Path, Query
from prometheus_client import Counter
from pydantic import StringConstraints, WithJsonSchema

from ...deps import COMMON_ERRORS, PROBLEM, Caller, Services, authorize, authorize_pending
from ...rest.auth import Principal
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ...rest.schemas import ID_PATTERN
from ..attributes import CATALOG_FIELDS
from ..query import RecommendationQuery
from ..schemas import PopularItems, Recommendations, SimilarItems

router = APIRouter(tags=["recommendations"])
# Every page answered, by the rung that served it (ranker, rules, popular), whether it was
# empty and whether it was degraded (a lower rung because something failed, not by
# decision): the fallback-rate and empty-list alerts read it.
SERVED = Counter(
    "recfleet_gateway_recommendations_total",
    "Recommendation pages answered, by the rung that served them, whether they were empty and degraded.",
    ["served_by", "empty", "degraded"],
)
_ID_RE = re.compile(ID_PATTERN)


@functools.cache
def _served(served_by: str, empty: bool, degraded: bool) -> Counter:
    """SERVED's child, found once (`labels` takes a lock)."""
    return SERVED.labels(served_by, str(empty).lower(), str(degraded).lower())


READ = "recommend:read"
UserId = Annotated[str, Query(pattern=ID_PATTERN, description="The user to recommend for.")]
Limit = Annotated[int, Query(ge=1, le=100, description="Items per page, 1-100.")]
Label = Annotated[str, Query(max_length=128, pattern=r"^[^\x00-\x1f]*$")]
# One `exclude` value: item ids separated by commas (white space around them is ignored).
EXCLUDE_PATTERN = r"^\s*(?:[A-Za-z0-9_.:\-]{1,128}\s*)?(?:,\s*(?:[A-Za-z0-9_.:\-]{1,128}\s*)?)*$"
ExcludeValue = Annotated[str, StringConstraints(pattern=EXCLUDE_PATTERN)]
# Cursors are base64url without padding (serving/cache.py's CursorCodec).
CURSOR_PATTERN = r"^[A-Za-z0-9_-]*$"
CURSOR_DOC = (
    "Opaque: the `next_cursor` of the previous page, as it was (base64url, at most 2048 characters); "
    "repeat the other parameters unchanged (`limit` may change). A cursor this API did not issue, "
    "or issued for other parameters, is refused with 400; one whose pages expired gets 410."
)
# `fields`: catalog attribute names, comma-separated and/or repeated; an empty value names none.
_FIELD_NAMES = "|".join(CATALOG_FIELDS)
FIELDS_PATTERN = rf"^(?:(?:{_FIELD_NAMES})(?:,(?:{_FIELD_NAMES}))*)?$"
FIELDS_DOC = (
    f"Catalog attributes to return inline on each item: {', '.join(CATALOG_FIELDS)} "
    "(comma-separate and/or repeat, e.g. `title,categories`). An item without a catalog entry gets "
    'each attribute\'s default (`""`, `[]`, `null`, `0`, `true`). Another name is refused with 400. '
    "Without it the items carry no attributes."
)
# The schema states the pattern; `parse_fields` checks the same, to name an unknown attribute.
FieldsValue = Annotated[str, WithJsonSchema({"type": "string", "pattern": FIELDS_PATTERN})]
Fields = Annotated[list[FieldsValue] | None, Query(description=FIELDS_DOC)]


def parse_exclude(values: list[str]) -> tuple[str, ...]:
    """Repeated and/or comma-separated item ids."""
    ids = [part.strip() for value in values for part in value.split(",") if part.strip()]
    bad = [item for item in ids if not _ID_RE.match(item)]
    if bad:
        raise Problem(
            400,
            f"exclude holds invalid item ids: {', '.join(bad[:5])}",
            errors=[{"field": "query.exclude", "message": f"invalid item id {item!r}"} for item in bad[:20]],
        )
    if len(ids) > 500:
        raise Problem(
            400, "exclude holds more than 500 ids", errors=[{"field": "query.exclude", "message": "too many"}]
        )
    return tuple(dict.fromkeys(ids))


def parse_fields(values: list[str] | None) -> tuple[str, ...]:
    """Repeated and/or comma-separated attribute names, each once, in `CATALOG_FIELDS` order."""
    names = {name for value in values or () if value for name in value.split(",")}
    unknown = sorted(names.difference(CATALOG_FIELDS))
    if unknown:
        known = ", ".join(CATALOG_FIELDS)
        raise Problem(
            400,
            f"fields names unknown attributes: {', '.join(map(repr, unknown[:5]))}; known: {known}",
            errors=[
                {"field": "query.fields", "message": f"unknown attribute {name!r}; one of {known}"}
                for name in unknown[:20]
            ],
        )
    return tuple(name for name in CATALOG_FIELDS if name in names)


@router.get(
    "/v1/recommendations",
    response_model=Recommendations,
    responses={**COMMON_ERRORS, 410: PROBLEM, 503: PROBLEM},
    summary="Personalised recommendations, paginated by cursor",
)
async def recommendations(
    *,
    user_id: UserId,
    caller: Annotated[Caller, Depends(authorize_pending(READ, user_from="user_id"))],
    limit: Limit = 20,
    surface: Annotated[str, Query(pattern=r"^[A-Za-z0-9_.:\-]{0,64}$", description="Where the list is shown.")] = "",
    cursor: Annotated[str | None, Query(pattern=CURSOR_PATTERN, max_length=2048, description=CURSOR_DOC)] = None,
    explain: Annotated[bool, Query(description="Add per-item explanations.")] = False,
    exclude: Annotated[
        list[ExcludeValue] | None,
        Query(max_length=500, description="Item ids to leave out (repeat or comma-separate; at most 500)."),
    ] = None,
    category: Label = "",
    fields: Fields = None,
    services: Services,
):
    wanted = parse_fields(fields)
    query = RecommendationQuery(
        user_id=user_id,
        limit=limit,
        surface=surface,
        cursor=cursor or None,
        explain=explain,
        exclude=parse_exclude(exclude or []),
        category=category,
    )
    # The rate limits are counted in the result cache's lookup: one round trip for both.
    answer = await services.recommender.recommend(query, caller.hit)
    services.served_lists.served(answer)
    _served(answer["served_by"], not answer["items"], bool(answer.get("degraded"))).inc()
    if wanted:
        # After the result cache: cached lists and snapshots hold no attributes, so one list
        # serves every `fields` value (its cursor's pages may ask for other fields).
        answer = await services.recommender.attributes.attach(answer, wanted, user_id)
    return JSONBody(answer)


@router.get(
    "/v1/items/{item_id}/similar",
    response_model=SimilarItems,
    responses={**COMMON_ERRORS, 404: PROBLEM, 503: PROBLEM},
    summary="Items similar to an item",
)
async def similar_items(
    *,
    item_id: Annotated[str, Path(pattern=ID_PATTERN)],
    _: Annotated[Principal, Depends(authorize(READ))],
    limit: Limit = 20,
    fields: Fields = None,
    services: Services,
):
    wanted = parse_fields(fields)
    answer = await services.recommender.similar(item_id, limit)
    if wanted:
        answer = await services.recommender.attributes.attach(answer, wanted)
    return JSONBody(answer)


@router.get(
    "/v1/popular",
    response_model=PopularItems,
    responses={**COMMON_ERRORS, 503: PROBLEM},
    summary="Popular or trending items",
)
async def popular(
    *,
    _: Annotated[Principal, Depends(authorize(READ))],
    limit: Limit = 20,
    category: Label = "",
    window: Annotated[Literal["all", "7d", "trending"], Query(description="Popularity window.")] = "all",
    fields: Fields = None,
    services: Services,
):
    wanted = parse_fields(fields)
    answer = await services.recommender.popular(window, category, limit)
    if wanted:
        answer = await services.recommender.attributes.attach(answer, wanted)
    return JSONBody(answer)
