"""The first hop of a recommendation: what the feature store knows about the user
(`GetUserFeatures`: features, constraints, the user vector), with defaults when it cannot
answer."""

from __future__ import annotations

from dataclasses import dataclass, field

from recfleet.common.v1 import common_pb2
from recfleet.features.v1 import features_pb2

from ..downstream.clients import DOWNSTREAM_ERRORS, is_timeout
from ..downstream.fleet import Fleet
from ..downstream.tracks import FEATURE_STORE, STABLE
from .shadow import Shadow, feature_agreement

# The feature store's `vector_status` when no model version serves (a fresh install).
NO_SERVING_MODEL = "no-serving-model"
# Its `vector_status` when the user has no vector of any version, and its prefix when the
# user has vectors, but only of other model versions.
NO_VECTOR = "missing"
VERSION_MISMATCH = "version-mismatch"


@dataclass
class UserContext:
    """What the feature store said about the user (defaults when it could not answer)."""

    constraints: common_pb2.UserConstraints = field(default_factory=common_pb2.UserConstraints)
    vector: list[float] = field(default_factory=list)
    vector_version: str = ""
    # Why no vector came back ("" when one did): "missing", "version-mismatch:<versions>", ...
    vector_status: str = ""
    interaction_count: int = 0
    numeric_features: dict[str, float] = field(default_factory=dict)
    liked_items: list[str] = field(default_factory=list)


async def read_user_context(fleet: Fleet, shadow: Shadow, user_id: str, degraded: list[str]) -> UserContext:
    """The user's context from the feature store; a failure is named in `degraded` and
    answered with defaults (the user then takes the cold-start path)."""
    client = fleet.feature_store.pick(fleet.router, user_id)
    request = features_pb2.GetUserFeaturesRequest(user_id=user_id)
    try:
        reply = await client.get_user_features(request)
    except DOWNSTREAM_ERRORS as error:
        degraded.append("feature-store-timeout" if is_timeout(error) else "feature-store-unavailable")
        return UserContext()
    canary = fleet.feature_store.canary
    if client.track == STABLE and canary is not None and shadow.wanted(FEATURE_STORE):
        shadow.mirror(FEATURE_STORE, canary.get_user_features, request, feature_agreement(reply))
    numeric = {
        name: value.number for name, value in reply.features.values.items() if value.WhichOneof("kind") == "number"
    }
    if reply.vector_status == NO_SERVING_MODEL:
        # Before the first training run promotes a model: the answer comes from the
        # popular and cold-start rungs, and says why.
        degraded.append("no-serving-model")
    liked_value = reply.features.values.get("liked_items")
    liked = list(liked_value.strings.values) if liked_value is not None else []
    return UserContext(
        constraints=reply.constraints,
        vector=list(reply.user_vector.values),
        vector_version=reply.user_vector.model_version,
        vector_status=reply.vector_status,
        interaction_count=reply.interaction_count,
        numeric_features=numeric,
        liked_items=liked,
    )
