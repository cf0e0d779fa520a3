"""The feature registry: the bundled views, a file given by path, malformed files refused."""

from __future__ import annotations

import pytest

from recfleet_store.features import registry

REGISTRY = registry.load()


def test_bundled_registry_has_typed_defaults():
    items = REGISTRY.for_entity("item")
    assert items["available"].default == 1.0 and items["regions"].default == []
    assert REGISTRY.for_entity("user")["category_counts"].default == "{}"
    assert REGISTRY.unknown("user", ["age", "height"]) == ["height"]


def test_a_registry_file_given_by_path_replaces_the_bundled_one(tmp_path):
    path = tmp_path / "views.yaml"
    path.write_text(
        "views:\n  - {name: score, entity: item, type: number, source: test, freshness: 60, default: 0.5, version: 2}\n"
    )
    loaded = registry.load(path)
    assert [(v.name, v.entity, v.default, v.freshness_seconds, v.version) for v in loaded.views] == [
        ("score", "item", 0.5, 60, 2)
    ]
    assert loaded.for_entity("user") == {}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"views": []}, "registry: `views` must be a non-empty list"),
        ({"views": [{"name": "x", "entity": "user"}]}, "views[0]: missing type, source, freshness, default, version"),
        (
            {
                "views": [
                    {
                        "name": "x",
                        "entity": "shop",
                        "type": "number",
                        "source": "s",
                        "freshness": 0,
                        "default": 0,
                        "version": 1,
                    }
                ]
            },
            "views[0].entity: must be one of user, item",
        ),
        (
            {
                "views": [
                    {
                        "name": "x",
                        "entity": "user",
                        "type": "number",
                        "source": "s",
                        "freshness": 0,
                        "default": [1],
                        "version": 1,
                    }
                ]
            },
            "views[0].default: x: expected a number, got list",
        ),
    ],
)
def test_malformed_registry_is_refused_with_the_place(document, message):
    with pytest.raises(registry.RegistryError) as caught:
        registry.parse(document)
    assert str(caught.value) == message
