import itertools

from recfleet_models.ranking.features import Candidate, CandidateColumns, UserContext
from recfleet_models.ranking.filters import apply_filters, filter_columns, reason_to_filter


def item(item_id="i", **features):
    features.setdefault("age_rating", 0)
    return Candidate(item_id, 1.0, "als", **features)


def user(**fields):
    return UserContext("u1", **fields)


def test_seen_items_are_removed():
    assert reason_to_filter(item("a"), user(seen_item_ids=frozenset({"a"}))) == "seen"
    assert reason_to_filter(item("b"), user(seen_item_ids=frozenset({"a"}))) is None


def test_unavailable_items_are_removed():
    assert reason_to_filter(item(available=False), user()) == "unavailable"


def test_any_blocked_category_removes_the_item():
    blocked = user(blocked_categories=frozenset({"Horror"}))
    assert reason_to_filter(item(categories=("Comedy", "Horror")), blocked) == "blocked-category"
    assert reason_to_filter(item(categories=("Comedy",)), blocked) is None


def test_minors_never_see_items_rated_above_their_age():
    assert reason_to_filter(item(age_rating=13), user(age=12)) == "age"
    assert reason_to_filter(item(age_rating=13), user(age=13)) is None
    assert reason_to_filter(item(age_rating=18), user(age=17)) == "age"
    assert reason_to_filter(item(age_rating=18), user(age=30)) is None


def test_unknown_age_sees_ratings_up_to_16_only():
    assert reason_to_filter(item(age_rating=16), user(age=0)) is None
    assert reason_to_filter(item(age_rating=18), user(age=0)) == "age"


def test_items_without_features_count_as_adult_only():
    unknown = Candidate("x", 1.0)
    assert reason_to_filter(unknown, user(age=0)) == "age"
    assert reason_to_filter(unknown, user(age=15)) == "age"
    assert reason_to_filter(unknown, user(age=40)) is None


def test_region_restricted_items_need_the_users_country():
    limited = item(regions=("DE", "AT"))
    assert reason_to_filter(limited, user(country="DE")) is None
    assert reason_to_filter(limited, user(country="US")) == "region"
    assert reason_to_filter(limited, user(country="")) == "region"
    assert reason_to_filter(item(regions=()), user(country="")) is None


def test_category_restricts_to_items_having_it():
    assert reason_to_filter(item(categories=("Drama", "Comedy")), user(), category="Comedy") is None
    assert reason_to_filter(item(categories=("Drama",)), user(), category="Comedy") == "category"


def test_apply_filters_counts_each_item_once_by_first_reason():
    candidates = [
        item("seen-and-blocked", categories=("Horror",)),
        item("blocked", categories=("Horror",)),
        item("old-enough", age_rating=16),
        item("adult", age_rating=18),
        item("fine"),
    ]
    result = apply_filters(
        candidates,
        user(age=16, seen_item_ids=frozenset({"seen-and-blocked"}), blocked_categories=frozenset({"Horror"})),
    )
    assert [c.item_id for c in result.kept] == ["old-enough", "fine"]
    assert result.removed == {"seen": 1, "blocked-category": 1, "age": 1}


def test_filters_over_columns_decide_and_count_as_one_item_at_a_time():
    """The service filters columns; every combination of item and user is decided as
    `reason_to_filter` decides it, and counted in the same order as `apply_filters`."""
    items = [
        item(
            f"i{n}",
            categories=categories,
            age_rating=rating,
            regions=regions,
            available=available,
        )
        for n, (categories, rating, regions, available) in enumerate(
            itertools.product(
                [(), ("Drama",), ("Horror", "Comedy")], [0, 16, 18, None], [(), ("DE",), ("FR", "US")], [True, False]
            )
        )
    ]
    users = [
        user(age=age, country=country, blocked_categories=blocked, seen_item_ids=seen)
        for age, country, blocked, seen in itertools.product(
            [0, 14, 16, 30],
            ["", "DE", "us"],
            [frozenset(), frozenset({"Horror"})],
            [frozenset(), frozenset({"i3", "i40"})],
        )
    ]
    columns = CandidateColumns.of(items)
    for someone in users:
        for category in ("", "Comedy"):
            kept, removed = filter_columns(columns, someone, category)
            expected = apply_filters(items, someone, category)
            assert columns.item_ids[kept].tolist() == [c.item_id for c in expected.kept]
            assert list(removed.items()) == list(expected.removed.items())
            assert [reason_to_filter(c, someone, category) is None for c in items].count(True) == len(kept)
