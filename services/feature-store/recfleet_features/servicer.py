"""recfleet.features.v1.FeatureStore over gRPC: maps protobuf to the domain and back."""

from __future__ import annotations

import weakref
from datetime import UTC

import grpc
import orjson
from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2, features_pb2_grpc

from .features import FeatureService
from .registry import FeatureView
from .rows import Row
from .validation import CatalogItem, Profile, ValidationError

SERVICE = features_pb2.DESCRIPTOR.services_by_name["FeatureStore"]
SERVICE_NAME = SERVICE.full_name
ROWS_FIELD = features_pb2.GetItemFeaturesResponse.DESCRIPTOR.fields_by_name["rows"].number
# GetItemFeatures answers bytes it assembled itself: a 500-item answer is the
# concatenation of cached, already encoded rows, where building the message would copy
# every row and serialize it again (most of the call's CPU).
PRE_SERIALIZED = ("GetItemFeatures",)


def repeated_field_entry(number: int, payload: bytes) -> bytes:
    """One entry of a repeated message field in protobuf wire format (tag, length, bytes)."""
    head = bytearray([number << 3 | 2])
    size = len(payload)
    while size > 0x7F:
        head.append(size & 0x7F | 0x80)
        size >>= 7
    head.append(size)
    return bytes(head) + payload


def add_to_server(servicer: FeatureStoreServicer, server: grpc.aio.Server) -> None:
    """Register the service like the generated `add_FeatureStoreServicer_to_server`,
    except that the methods in PRE_SERIALIZED hand gRPC bytes that are sent as they are."""
    handlers = {}
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


def fill_value(target: features_pb2.FeatureValue, value) -> None:
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


def from_value(value: features_pb2.FeatureValue):
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


def fill_columns(reply: features_pb2.GetItemFeaturesResponse, views: list[FeatureView], rows: list[Row]) -> None:
    """One column per view, values in row order, defaulted positions listed."""
    defaulted: dict[str, list[int]] = {view.name: [] for view in views}
    for index, row in enumerate(rows):
        for name in row.defaulted:
            defaulted[name].append(index)
    for view in views:
        column = reply.columns.add(name=view.name, defaulted=defaulted[view.name])
        values = [row.values[view.name] for row in rows]
        if view.type == "number":
            column.numbers.extend(values)
        elif view.type == "text":
            column.texts.extend(values)
        else:
            lists = column.lists
            for value in values:
                lists.add().values.extend(value)


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


async def _invalid(context: grpc.aio.ServicerContext, error: ValidationError):
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))


class FeatureStoreServicer(features_pb2_grpc.FeatureStoreServicer):
    def __init__(self, features: FeatureService):
        self.features = features
        # Encoded `rows` entries of shared item rows, alive as long as the row is cached.
        self._row_bytes: weakref.WeakKeyDictionary[Row, bytes] = weakref.WeakKeyDictionary()

    async def GetUserFeatures(self, request, context):
        try:
            found = await self.features.get_user(request.user_id, list(request.feature_names), request.model_version)
        except ValidationError as error:
            return await _invalid(context, error)
        reply = features_pb2.GetUserFeaturesResponse(
            vector_status=found.vector_status, interaction_count=found.interaction_count
        )
        fill_row(reply.features, found.row)
        if found.vector is not None:
            reply.user_vector.values.extend(found.vector)
            reply.user_vector.model_version = found.vector_version
        c = found.constraints
        reply.constraints.CopyFrom(
            common_pb2.UserConstraints(
                blocked_categories=c.blocked_categories,
                preferred_categories=c.preferred_categories,
                age=c.age,
                country=c.country,
                seen_item_ids=c.seen_item_ids,
            )
        )
        return reply

    async def GetItemFeatures(self, request, context):
        names = list(request.feature_names)
        try:
            rows = await self.features.get_items(list(request.item_ids), names)
        except ValidationError as error:
            return await _invalid(context, error)
        if request.columnar:
            reply = features_pb2.GetItemFeaturesResponse()
            fill_columns(reply, self.features.views("item", names), rows)
            return reply.SerializeToString()
        parts = []
        for row in rows:
            encoded = self._row_bytes.get(row)
            if encoded is None:
                message = features_pb2.FeatureRow()
                fill_row(message, row)
                encoded = self._row_bytes[row] = repeated_field_entry(ROWS_FIELD, message.SerializeToString())
            parts.append(encoded)
        return b"".join(parts)

    async def WriteFeatures(self, request, context):
        rows = [(row.entity_id, {name: from_value(v) for name, v in row.values.items()}) for row in request.rows]
        event_time = request.event_time.ToDatetime(tzinfo=UTC) if request.HasField("event_time") else None
        try:
            written = await self.features.write(request.entity, rows, event_time)
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.WriteFeaturesResponse(written=written)

    async def ListFeatureViews(self, request, context):
        return features_pb2.ListFeatureViewsResponse(
            views=[view_message(view) for view in self.features.registry.views]
        )

    async def GetPopularItems(self, request, context):
        try:
            items, source = await self.features.popular(
                request.window, request.category, request.limit, list(request.exclude_item_ids)
            )
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.GetPopularItemsResponse(
            items=[common_pb2.ScoredItem(item_id=i, score=s, source=source) for i, s in items]
        )

    async def UpsertItems(self, request, context):
        try:
            upserted, created = await self.features.upsert_items([catalog_item(item) for item in request.items])
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.UpsertItemsResponse(upserted=upserted, created=created)

    async def PutUserProfile(self, request, context):
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

    async def ExportUser(self, request, context):
        try:
            document = await self.features.export_user(request.user_id)
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.ExportUserResponse(json=orjson.dumps(document).decode())

    async def EraseUser(self, request, context):
        try:
            removed = await self.features.erase_user(request.user_id)
        except ValidationError as error:
            return await _invalid(context, error)
        return features_pb2.EraseUserResponse(removed=removed)
