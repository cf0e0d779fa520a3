"""What a `GET /v1/recommendations` asks for, once validated."""

from __future__ import annotations

from dataclasses import dataclass

from .cache import parameters_digest


@dataclass(frozen=True)
class RecommendationQuery:
    """The validated parameters of `GET /v1/recommendations`."""

    user_id: str
    limit: int = 20
    surface: str = ""
    cursor: str | None = None
    explain: bool = False
    exclude: tuple[str, ...] = ()
    category: str = ""

    def fixed_parameters(self) -> dict:
        """What a cursor is bound to (the page size may change between pages)."""
        return {
            "user_id": self.user_id,
            "surface": self.surface,
            "explain": self.explain,
            "exclude": sorted(self.exclude),
            "category": self.category,
        }

    def cache_digest(self) -> str:
        return parameters_digest({**self.fixed_parameters(), "limit": self.limit})
