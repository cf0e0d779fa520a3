"""Redis key layout shared by the feature store, event consumers and the gateway."""

PREFIX = "rf"


def user(user_id: str) -> str:
    """Hash: online user features, `vec` (float32 bytes), `vec_version`, profile fields."""
    return f"{PREFIX}:u:{{{user_id}}}"


def user_seen(user_id: str) -> str:
    """Set: every item the user interacted with."""
    return f"{PREFIX}:u:{{{user_id}}}:seen"


def user_recent(user_id: str) -> str:
    """List: most recent item ids, newest first, capped."""
    return f"{PREFIX}:u:{{{user_id}}}:recent"


def item(item_id: str) -> str:
    """Hash: online item features and catalog fields."""
    return f"{PREFIX}:i:{item_id}"


def item_buckets(item_id: str) -> str:
    """Hash: the item's interactions per time bucket, by event time, for the windowed counts
    (`interactions_1h`, `_24h`, `_7d` in the item hash). Field `<bucket seconds>:<bucket
    start epoch>` (5-minute buckets back 1 hour, hourly ones back 7 days), value the count;
    expired buckets are deleted and the key expires 8 days after its last write. A prefix
    of its own (not `rf:i:<item>:...`) because item ids may contain `:`."""
    return f"{PREFIX}:ib:{item_id}"


def popular(window: str, category: str = "") -> str:
    """Sorted set: item -> popularity score in a window, optionally per category."""
    return f"{PREFIX}:pop:{window}:{category or '*'}"


def result_cache(user_id: str) -> str:
    """Hash: cached recommendation responses for one user, field = parameter digest."""
    return f"{PREFIX}:cache:{{{user_id}}}"


def erased(user_id: str) -> str:
    return f"{PREFIX}:erased:{user_id}"


SERVING_VERSION = f"{PREFIX}:model:als:serving"


def serving_version_key(kind: str) -> str:
    """String: the serving version of a model kind (`als`: `SERVING_VERSION`), written by
    promote and rollback."""
    return f"{PREFIX}:model:{kind}:serving"


# Pub/sub channel: a JSON list of item ids whose catalog fields just changed (the feature
# store publishes on every upsert; ranking drops those items from its in-process cache).
ITEMS_CHANGED = f"{PREFIX}:items:changed"


def user_vectors(user_id: str) -> str:
    """Hash: model version -> user vector as little-endian float32 bytes."""
    return f"{PREFIX}:uv:{{{user_id}}}"
