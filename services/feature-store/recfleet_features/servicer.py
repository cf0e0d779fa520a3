"""recfleet.features.v1.FeatureStore over gRPC: maps protobuf to the domain and back."""

from __future__ import annotations

import json
from datetime import UTC, date
from itertools import repeat
from typing import Any, Never, TypeVar
from uuid import UUID

import grpc
import orjson
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc
from recfleet_runtime.batching import OK_STATUS, entry_status
from recfleet_store.features.registry import FeatureView

from . import wire
from .features import FeatureService, UserFeatures, UserQuery, check_batch_size
from .rows import Row
from .validation import CatalogItem, Profile, ValidationError

SERVICE = features_pb2.DESCRIPTOR.services_by_name["FeatureStore"]
SERVICE_NAME = SERVICE.full_name
_ANSWER = features_pb2.GetItemFeaturesResponse.DESCRIPTOR.fields_by_name
ROWS_FIELD, COLUMNS_FIELD = _ANSWER["rows"].number, _ANSWER["columns"].number
_COLUMN = features_pb2.FeatureColumn.DESCRIPTOR.fields_by_name
COLUMN_NAME, COLUMN_NUMBERS, COLUMN_TEXTS, COLUMN_LISTS, COLUMN_DEFAULTED = (
    _COLUMN[name].number for name in ("name", "numbers", "texts", "lists", "defaulted")
)
STRING_LIST_VALUES = features_pb2.StringList.DESCRIPTOR.fields_by_name["values"].number
# GetItemFeatures answers bytes it assembled itself: a 500-item answer is the
# concatenation of cached, already encoded rows (or column cells), where building the
# message would copy every value into it and serialize it again (most of the call's CPU).
PRE_SERIALIZED = ("GetItemFeatures",)
# A row's cached encoding: its GetItemFeaturesResponse.rows entry or its column cells.
EncodingT = TypeVar("EncodingT", bytes, tuple[Any, ...])


def add_to_server(servicer: FeatureStoreServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated `add_FeatureStoreServicer_to_server`,
    except that the methods in PRE_SERIALIZED hand gRPC bytes that are sent as they are."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in SERVICE.methods:
        request_class = getattr(features_pb2, method.input_type.name)
        response_class = getattr(features_pb2, method.output_type.name)
        handlers[method.name] = grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=request_class.FromString,
            response_serializer=bytes if method.name in PRE_SERIALIZED else response_class.SerializeToString,
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def fill_value(target: features_pb2.FeatureValue, value: Any) -> None:
    """Set a FeatureValue in place from a float, str or list of str."""
    kind = value.__class__
    if kind is float:
        target.number = value
    elif kind is str:
        target.text = value
    elif kind is list:
        target.strings.values.extend(value)
    else:
        target.number = value


def from_value(value: features_pb2.FeatureValue) -> float | str | list[str] | None:
    kind = value.WhichOneof("kind")
    if kind == "number":
        return value.number
    if kind == "text":
        return value.text
    if kind == "strings":
        return list(value.strings.values)
    return None


def fill_row(target: features_pb2.FeatureRow, row: Row) -> None:
    target.entity_id = row.entity_id
    values = target.values
    for name, value in row.values.items():
        fill_value(values[name], value)
    target.defaulted.extend(row.defaulted)


def row_entry(row: Row) -> bytes:
    """The row as one entry of GetItemFeaturesResponse.rows."""
    message = features_pb2.FeatureRow()
    fill_row(message, row)
    return wire.length_delimited(ROWS_FIELD, message.SerializeToString())


def column_cells(row: Row, views: list[FeatureView]) -> tuple[Any, ...]:
    """The row's value for each view as its column carries it: a number as it is (a
    column packs them all at once), a text or a list as its encoded column entry."""
    cells = []
    for view in views:
        value = row.values[view.name]
        if view.type == "number":
            cells.append(value)
        elif view.type == "text":
            cells.append(wire.length_delimited(COLUMN_TEXTS, value.encode()))
        else:
            cells.append(wire.length_delimited(COLUMN_LISTS, wire.string_entries(STRING_LIST_VALUES, value)))
    return tuple(cells)


def encode_columns(views: list[FeatureView], rows: list[Row], cells: list[tuple[Any, ...]]) -> bytes:
    """GetItemFeaturesResponse.columns from each row's `column_cells`: one column per
    view, values in row order, defaulted positions listed."""
    defaulted: dict[str, list[int]] = {view.name: [] for view in views}
    for index, row in enumerate(rows):
        for name in row.defaulted:
            defaulted[name].append(index)
    parts = []
    for view, column in zip(views, zip(*cells, strict=False) if cells else repeat(()), strict=False):
        body = wire.length_delimited(COLUMN_NAME, view.name.encode())
        body += wire.packed_doubles(COLUMN_NUMBERS, column) if view.type == "number" else b"".join(column)
        body += wire.packed_varints(COLUMN_DEFAULTED, defaulted[view.name])
        parts.append(wire.length_delimited(COLUMNS_FIELD, body))
    return b"".join(parts)


def view_message(view: FeatureView) -> features_pb2.FeatureView:
    message = features_pb2.FeatureView(
        name=view.name,
        entity=view.entity,
        type=view.type,
        source=view.source,
        freshness_seconds=view.freshness_seconds,
        version=view.version,
        description=view.description,
    )
    fill_value(message.default_value, view.default)
    return message


def catalog_item(message: features_pb2.Item) -> CatalogItem:
    return CatalogItem(
        item_id=message.item_id,
        title=message.title,
        categories=list(message.categories),
        creator=message.creator,
        published_at=message.published_at.ToDatetime(tzinfo=UTC) if message.HasField("published_at") else None,
        tags=list(message.tags),
        age_rating=message.age_rating,
        regions=list(message.regions),
        available=message.available,
    )


def profile_message(profile: Profile) -> features_pb2.UserProfile:
    return features_pb2.UserProfile(
        user_id=profile.user_id,
        preferred_categories=profile.preferred_categories,
        blocked_categories=profile.blocked_categories,
        liked_items=profile.liked_items,
        age=profile.age,
        country=profile.country,
    )


def user_query(request: features_pb2.GetUserFeaturesRequest) -> UserQuery:
    return UserQuery(request.user_id, tuple(request.feature_names), request.model_version)


def fill_user_features(target: features_pb2.GetUserFeaturesResponse, found: UserFeatures) -> None:
    """Set a GetUserFeaturesResponse in place (a unary reply, or a batch entry's response)."""
    target.vector_status = found.vector_status
    target.interaction_count = found.interaction_count
    fill_row(target.features, found.row)
    if found.vector is not None:
        target.user_vector.values.extend(found.vector)
        target.user_vector.model_version = found.vector_version
    c, constraints = found.constraints, target.constraints
    constraints.blocked_categories.extend(c.blocked_categories)
    constraints.preferred_categories.extend(c.preferred_categories)
    constraints.age = c.age
    constraints.country = c.country
    constraints.seen_item_ids.extend(c.seen_item_ids)


async def _invalid(context: grpc.aio.ServicerContext, error: ValidationError) -> Never:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


def export_json(document: dict[str, Any]) -> str:
    """The export as JSON. orjson refuses integers beyond 64 bits, which a stored JSON
    number such as `1e30` in an event's context reads back as; json writes them."""
    try:
        return orjson.dumps(document).decode()
    except TypeError:
        return json.dumps(document, default=_as_json, ensure_ascii=False, separators=(",", ":"))


def _as_json(value: Any) -> str:
    """What orjson writes for the other types an export holds: times, dates and UUIDs."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class FeatureStoreServicer(features_pb2_grpc.FeatureStoreServicer):
    def __init__(self, features: FeatureService):
        self.features = features
        # Item rows are shared between reads while their stored values do not change
        # (FeatureService's row cache): their encodings are kept beside them, by row
        # identity, within the same bound. A row is always built for one list of views
        # (the cache keys on it), so its column cells are too.
        self._encodings_kept = features.item_row_cache_size
        self._row_entries: dict[Row, bytes] = {}
        self._column_cells: dict[Row, tuple[Any, ...]] = {}

    async def GetUserFeatures(
        self, request: features_pb2.GetUserFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetUserFeaturesResponse:
        # A batch of one: the unary and the batched call share every step.
        [found] = await self.features.get_users([user_query(request)])
        if isinstance(found, ValidationError):
            return await _invalid(context, found)
        reply = features_pb2.GetUserFeaturesResponse()
        fill_user_features(reply, found)
        return reply

    async def GetUserFeaturesBatch(
        self, request: features_pb2.GetUserFeaturesBatchRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetUserFeaturesBatchResponse:
        """Each entry answered as GetUserFeatures would answer it alone (a rejected entry
        gets INVALID_ARGUMENT in its own status), every user read in one Redis round trip."""
        try:
            check_batch_size(len(request.requests))
        except ValidationError as error:
            return await _invalid(context, error)
        answers = await self.features.get_users([user_query(entry) for entry in request.requests])
        reply = features_pb2.GetUserFeaturesBatchResponse()
        results = reply.results
        for found in answers:
            result = results.add()
            if isinstance(found, ValidationError):
                result.status.CopyFrom(entry_status(grpc.StatusCode.INVALID_ARGUMENT, str(found)))
            else:
                result.status.CopyFrom(OK_STATUS)
                fill_user_features(result.response, found)
        return reply

    # Answers the encoded GetItemFeaturesResponse: add_to_server registers it with a pass-through
    # serializer (PRE_SERIALIZED), which the generated base class cannot express.
    async def GetItemFeatures(  # type: ignore[override]
        self, request: features_pb2.GetItemFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> bytes:
        names = list(request.feature_names)
        try:
            rows = await self.features.get_items(list(request.item_ids), names)
        except ValidationError as error:
            return await _invalid(context, error)
        if request.columnar:
            views = self.features.views("item", names)
            kept_cells = self._column_cells
            cells = [kept_cells.get(row) or self._keep(kept_cells, row, column_cells(row, views)) for row in rows]
            return encode_columns(views, rows, cells)
        kept_entries = self._row_entries
        return b"".join([kept_entries.get(row) or self._keep(kept_entries, row, row_entry(row)) for row in rows])

    def _keep(self, kept: dict[Row, EncodingT], row: Row, encoding: EncodingT) -> EncodingT:
        if len(kept) >= self._encodings_kept:
            kept.clear()
        kept[row] = encoding
        return encoding

    async def WriteFeatures(
        self, request: features_pb2.WriteFeaturesRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.WriteFeaturesResponse:
        rows = [(row.entity_id, {name: from_value(v) for name, v in row.values.items()}) for row in request.rows]
        event_time = request.event_time.ToDatetime(tzinfo=UTC) if request.HasField("event_time") else None
        try:
            written = await self.features.write(request.entity, rows, event_time)
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.WriteFeaturesResponse(written=written)

    async def ListFeatureViews(
        self, request: features_pb2.ListFeatureViewsRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.ListFeatureViewsResponse:
        return features_pb2.ListFeatureViewsResponse(
            views=[view_message(view) for view in self.features.registry.views]
        )

    async def GetPopularItems(
        self, request: features_pb2.GetPopularItemsRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.GetPopularItemsResponse:
        try:
            items, source = await self.features.popular(
                request.window, request.category, request.limit, list(request.exclude_item_ids)
            )
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.GetPopularItemsResponse(
            items=[common_pb2.ScoredItem(item_id=i, score=s, source=source) for i, s in items]
        )

    async def UpsertItems(
        self, request: features_pb2.UpsertItemsRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.UpsertItemsResponse:
        try:
            upserted, created = await self.features.upsert_items([catalog_item(item) for item in request.items])
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.UpsertItemsResponse(upserted=upserted, created=created)

    async def PutUserProfile(
        self, request: features_pb2.PutUserProfileRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.PutUserProfileResponse:
        p = request.profile
        profile = Profile(
            user_id=p.user_id,
            preferred_categories=list(p.preferred_categories),
            blocked_categories=list(p.blocked_categories),
            liked_items=list(p.liked_items),
            age=p.age,
            country=p.country,
        )
        try:
            stored = await self.features.put_profile(profile)
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.PutUserProfileResponse(profile=profile_message(stored))

    async def ExportUser(
        self, request: features_pb2.ExportUserRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.ExportUserResponse:
        try:
            document = await self.features.export_user(request.user_id)
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.ExportUserResponse(json=export_json(document))

    async def EraseUser(
        self, request: features_pb2.EraseUserRequest, context: grpc.aio.ServicerContext
    ) -> features_pb2.EraseUserResponse:
        try:
            removed = await self.features.erase_user(request.user_id)
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.EraseUserResponse(removed=removed)
