"""The ranking library's model fixtures (a small lambdarank model that learned "popular
first"), shared with the service's tests."""

from recfleet_models.ranking.conftest import popularity_model, popularity_ranker  # noqa: F401
