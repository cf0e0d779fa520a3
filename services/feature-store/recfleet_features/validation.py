"""Validation of catalog items and user profiles, with messages naming the field and why.

Pure: takes plain values, returns normalised domain objects or raises ValidationError.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime

ID_PATTERN = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# Many ids at once, newline-joined: one regex call instead of one per id.
ID_LIST_PATTERN = re.compile(r"(?:[A-Za-z0-9_.:-]{1,128}\n)*[A-Za-z0-9_.:-]{1,128}")
COUNTRY_PATTERN = re.compile(r"[A-Z]{2}")
AGE_RATINGS = (0, 7, 13, 16, 18)
MAX_TITLE = 1000
MAX_LABEL = 128
MAX_LIST = 100
MAX_ITEMS_PER_UPSERT = 1000
MAX_AGE = 150


class ValidationError(ValueError):
    """Bad input; the message names the field (with its index) and the reason."""


@dataclass
class CatalogItem:
    item_id: str
    title: str = ""
    categories: list[str] = field(default_factory=list)
    creator: str = ""
    published_at: datetime | None = None
    tags: list[str] = field(default_factory=list)
    age_rating: int = 0
    regions: list[str] = field(default_factory=list)
    available: bool = True

    def online_fields(self) -> dict:
        """The catalog fields as stored in the item hash (docs/CONTRACTS.md names)."""
        return {
            "title": self.title,
            "categories": self.categories,
            "creator": self.creator,
            "published_at": int(self.published_at.timestamp()) if self.published_at else 0,
            "tags": self.tags,
            "age_rating": self.age_rating,
            "regions": self.regions,
            "available": 1 if self.available else 0,
        }


@dataclass
class Profile:
    user_id: str
    preferred_categories: list[str] = field(default_factory=list)
    blocked_categories: list[str] = field(default_factory=list)
    liked_items: list[str] = field(default_factory=list)
    age: int = 0
    country: str = ""

    def online_fields(self) -> dict:
        return {
            "preferred_categories": self.preferred_categories,
            "blocked_categories": self.blocked_categories,
            "liked_items": self.liked_items,
            "age": self.age,
            "country": self.country,
        }


def check_id(value: str, where: str) -> str:
    if not value:
        raise ValidationError(f"{where}: required")
    if not ID_PATTERN.fullmatch(value):
        raise ValidationError(f"{where}: must be 1-128 characters of A-Z a-z 0-9 _ . : - (got {value[:40]!r})")
    return value


def check_ids(values: list[str], where: str) -> None:
    """Every id valid, or ValidationError naming the first bad one as `where[i]`."""
    joined = "\n".join(values)
    # The count guards against an id that itself holds a newline posing as two ids.
    if values and joined.count("\n") == len(values) - 1 and ID_LIST_PATTERN.fullmatch(joined):
        return
    for index, value in enumerate(values):
        check_id(value, f"{where}[{index}]")


def _labels(values: list[str], where: str, max_length: int = MAX_LABEL) -> list[str]:
    if len(values) > MAX_LIST:
        raise ValidationError(f"{where}: at most {MAX_LIST} entries (got {len(values)})")
    out = []
    for index, value in enumerate(values):
        value = value.strip()
        if not value:
            raise ValidationError(f"{where}[{index}]: must not be empty")
        if len(value) > max_length:
            raise ValidationError(f"{where}[{index}]: at most {max_length} characters")
        if value not in out:
            out.append(value)
    return out


def _countries(values: list[str], where: str) -> list[str]:
    for index, value in enumerate(values):
        if not COUNTRY_PATTERN.fullmatch(value):
            raise ValidationError(
                f"{where}[{index}]: must be an ISO 3166 alpha-2 code in upper case, e.g. DE (got {value!r})"
            )
    return sorted(set(values))


def validate_item(item: CatalogItem, where: str = "item") -> CatalogItem:
    """The item, normalised (trimmed, de-duplicated lists), or ValidationError."""
    check_id(item.item_id, f"{where}.item_id")
    if len(item.title) > MAX_TITLE:
        raise ValidationError(f"{where}.title: at most {MAX_TITLE} characters")
    if len(item.creator) > MAX_TITLE:
        raise ValidationError(f"{where}.creator: at most {MAX_TITLE} characters")
    if item.age_rating not in AGE_RATINGS:
        raise ValidationError(
            f"{where}.age_rating: must be one of {', '.join(map(str, AGE_RATINGS))} (got {item.age_rating})"
        )
    return CatalogItem(
        item_id=item.item_id,
        title=item.title.strip(),
        categories=_labels(item.categories, f"{where}.categories"),
        creator=item.creator.strip(),
        published_at=item.published_at,
        tags=_labels(item.tags, f"{where}.tags"),
        age_rating=item.age_rating,
        regions=_countries(item.regions, f"{where}.regions"),
        available=item.available,
    )


def validate_items(items: list[CatalogItem]) -> list[CatalogItem]:
    """A batch: 1..1000 items, unique ids, each valid; errors name `items[i].field`."""
    if not items:
        raise ValidationError("items: at least one item is required")
    if len(items) > MAX_ITEMS_PER_UPSERT:
        raise ValidationError(f"items: at most {MAX_ITEMS_PER_UPSERT} per call (got {len(items)})")
    seen: dict[str, int] = {}
    out = []
    for index, item in enumerate(items):
        valid = validate_item(item, f"items[{index}]")
        if valid.item_id in seen:
            raise ValidationError(
                f"items[{index}].item_id: duplicates items[{seen[valid.item_id]}] ({valid.item_id!r})"
            )
        seen[valid.item_id] = index
        out.append(valid)
    return out


def validate_profile(profile: Profile, where: str = "profile") -> Profile:
    """The profile, normalised, or ValidationError."""
    check_id(profile.user_id, f"{where}.user_id")
    if not 0 <= profile.age <= MAX_AGE:
        raise ValidationError(f"{where}.age: must be between 0 (unknown) and {MAX_AGE} years (got {profile.age})")
    if profile.country and not COUNTRY_PATTERN.fullmatch(profile.country):
        raise ValidationError(
            f"{where}.country: must be an ISO 3166 alpha-2 code in upper case, e.g. DE (got {profile.country!r})"
        )
    liked = []
    if len(profile.liked_items) > MAX_LIST:
        raise ValidationError(f"{where}.liked_items: at most {MAX_LIST} entries (got {len(profile.liked_items)})")
    for index, item_id in enumerate(profile.liked_items):
        check_id(item_id, f"{where}.liked_items[{index}]")
        if item_id not in liked:
            liked.append(item_id)
    return Profile(
        user_id=profile.user_id,
        preferred_categories=_labels(profile.preferred_categories, f"{where}.preferred_categories"),
        blocked_categories=_labels(profile.blocked_categories, f"{where}.blocked_categories"),
        liked_items=liked,
        age=profile.age,
        country=profile.country,
    )
