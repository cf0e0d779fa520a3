"""The feature registry: which features exist, their types, freshness and defaults.

Loaded from YAML (the bundled `feature_views.yaml` unless a path is given). Pure: no
network or database access.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import orjson
import yaml

ENTITIES = ("user", "item")
TYPES = ("number", "text", "strings")
BUNDLED = "feature_views.yaml"


class RegistryError(ValueError):
    """The registry file is malformed."""


@dataclass(frozen=True)
class FeatureView:
    """One feature of one entity."""

    name: str
    entity: str
    type: str
    source: str
    freshness_seconds: int
    default: Any
    version: int
    description: str

    def accepts(self, value: Any) -> bool:
        """Whether a written value already has this view's type (writes are strict; reads coerce)."""
        if self.type == "number":
            return isinstance(value, (int, float)) and not isinstance(value, bool)
        if self.type == "text":
            return isinstance(value, str)
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    def coerce(self, value: Any) -> Any:
        """A stored value as this view's type: float, str or list[str].

        Raises ValueError when the value cannot be read as the type.
        """
        if self.type == "number":
            if isinstance(value, bool):
                return 1.0 if value else 0.0
            if isinstance(value, (int, float)):
                return float(value)
            if isinstance(value, str):
                return float(value)
            raise ValueError(f"{self.name}: expected a number, got {type(value).__name__}")
        if self.type == "text":
            if isinstance(value, str):
                return value
            # Structured values (category_counts) travel as their JSON text.
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
        if isinstance(value, (list, tuple)):
            return [str(v) for v in value]
        raise ValueError(f"{self.name}: expected a list of strings, got {type(value).__name__}")


class Registry:
    """Feature views by entity, in file order."""

    def __init__(self, views: list[FeatureView]):
        self.views = views
        self._by_entity: dict[str, dict[str, FeatureView]] = {entity: {} for entity in ENTITIES}
        for view in views:
            if view.name in self._by_entity[view.entity]:
                raise RegistryError(f"duplicate {view.entity} feature {view.name!r}")
            self._by_entity[view.entity][view.name] = view

    def for_entity(self, entity: str) -> dict[str, FeatureView]:
        """name -> view for one entity ("user" or "item")."""
        return self._by_entity[entity]

    def view(self, entity: str, name: str) -> FeatureView | None:
        return self._by_entity[entity].get(name)

    def unknown(self, entity: str, names: list[str]) -> list[str]:
        """The names that are not features of the entity."""
        known = self._by_entity[entity]
        return [name for name in names if name not in known]


def parse(document: dict[str, Any]) -> Registry:
    """Build a registry from the YAML document's mapping; raises RegistryError with the view's index."""
    raw_views = document.get("views") if isinstance(document, dict) else None
    if not isinstance(raw_views, list) or not raw_views:
        raise RegistryError("registry: `views` must be a non-empty list")
    views = []
    for index, raw in enumerate(raw_views):
        where = f"views[{index}]"
        missing = [
            key for key in ("name", "entity", "type", "source", "freshness", "default", "version") if key not in raw
        ]
        if missing:
            raise RegistryError(f"{where}: missing {', '.join(missing)}")
        if raw["entity"] not in ENTITIES:
            raise RegistryError(f"{where}.entity: must be one of {', '.join(ENTITIES)}")
        if raw["type"] not in TYPES:
            raise RegistryError(f"{where}.type: must be one of {', '.join(TYPES)}")
        if not isinstance(raw["freshness"], int) or raw["freshness"] < 0:
            raise RegistryError(f"{where}.freshness: must be a whole number of seconds >= 0")
        view = FeatureView(
            name=str(raw["name"]),
            entity=raw["entity"],
            type=raw["type"],
            source=str(raw["source"]),
            freshness_seconds=raw["freshness"],
            default=None,
            version=int(raw["version"]),
            description=str(raw.get("description", "")),
        )
        try:
            default = view.coerce(raw["default"])
        except ValueError as error:
            raise RegistryError(f"{where}.default: {error}") from None
        views.append(FeatureView(**{**view.__dict__, "default": default}))
    return Registry(views)


def load(path: str | Path | None = None) -> Registry:
    """The registry at `path`, or the one bundled with the package when empty."""
    text = Path(path).read_text() if path else resources.files(__package__).joinpath(BUNDLED).read_text()
    return parse(yaml.safe_load(text))
