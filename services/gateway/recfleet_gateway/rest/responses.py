"""The JSON response class of the API: orjson, which also writes datetimes as RFC 3339;
and `RenderedJSON`, an answer sent again as the bytes it was stored as."""

from __future__ import annotations

import json
from datetime import date
from typing import Any
from uuid import UUID

import orjson
from starlette.responses import JSONResponse

REQUEST_ID_HEAD = b'{"request_id":'


class RenderedJSON(dict[str, Any]):
    """A JSON object read from `raw`, its own serialisation, whose first field is
    `request_id`. `JSONBody` sends it as `raw` with only the request id replaced, so a
    cached answer is never serialised again. Changing any other top-level field (or
    `raw` not being this object's JSON with `request_id` first) makes it an ordinary
    dict to render; nested values must be left as they are."""

    __slots__ = ("_tail",)

    def __init__(self, content: dict[str, Any], raw: bytes):
        super().__init__(content)
        head = REQUEST_ID_HEAD + orjson.dumps(content.get("request_id"))
        # Everything after the request id's value, from the comma on.
        self._tail: bytes | None = raw[len(head) :] if raw.startswith(head + b",") and raw.endswith(b"}") else None

    def rendered(self) -> bytes | None:
        """The JSON of this object, or None when it changed beyond its request id."""
        if self._tail is None:
            return None
        return REQUEST_ID_HEAD + orjson.dumps(self["request_id"]) + self._tail

    def _changed(self) -> None:
        self._tail = None

    def __setitem__(self, key: str, value: Any) -> None:
        if key != "request_id":
            self._changed()
        super().__setitem__(key, value)

    def __delitem__(self, key: str) -> None:
        self._changed()
        super().__delitem__(key)

    def __ior__(self, other: Any) -> RenderedJSON:  # type: ignore[override,misc]
        self._changed()
        super().__ior__(other)
        return self

    def update(self, *args: Any, **kwargs: Any) -> None:
        self._changed()
        super().update(*args, **kwargs)

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self._changed()
        return super().setdefault(key, default)

    def pop(self, *args: Any) -> Any:
        self._changed()
        return super().pop(*args)

    def popitem(self) -> tuple[str, Any]:
        self._changed()
        return super().popitem()

    def clear(self) -> None:
        self._changed()
        super().clear()


class JSONBody(JSONResponse):
    def render(self, content: Any) -> bytes:
        if type(content) is RenderedJSON:
            rendered = content.rendered()
            if rendered is not None:
                return rendered
        try:
            return orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            # orjson refuses integers beyond 64 bits, which a stored JSON number such as 1e30
            # (an event's context) reads back as from Postgres; json writes them.
            return json.dumps(content, default=_as_json, ensure_ascii=False, separators=(",", ":")).encode()


def _as_json(value: Any) -> str:
    """What orjson writes for the other types a body holds: times, dates and UUIDs."""
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
