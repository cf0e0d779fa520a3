"""Readers for the MovieLens datasets recfleet trains and evaluates on.

Two layouts are supported:

- `ml-latest-small` (bundled in `data/`): `movies.csv`, `ratings.csv`, `tags.csv`, UTF-8
  with CRLF line ends; genres are `|`-separated and "(no genres listed)" means none.
- `ml-100k` (read from a path, never copied: its licence forbids redistribution):
  `u.data` tab-separated, `u.item` latin-1 and `|`-separated with 19 genre flags whose
  names come from `u.genre`.

Everything is returned as plain dataclasses and numpy arrays; ids stay the datasets'
own integers so that splits can be reproduced exactly as published benchmarks made them.
"""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FORMATS = ("ml-latest-small", "ml-100k")
NO_GENRES = "(no genres listed)"
# "Title (1995)" and the odd "Title (2006-2007)"; the first year is the release year.
_TITLE_YEAR = re.compile(r"\((\d{4})(?:\s*[-\u2013]\s*\d{4})?\)\s*$")


@dataclass(frozen=True)
class Movie:
    """One catalog entry."""

    movie_id: int
    title: str
    genres: tuple[str, ...]
    year: int | None


@dataclass(frozen=True)
class Ratings:
    """Explicit ratings in file order (the order benchmark splitters see)."""

    user_ids: np.ndarray  # int64
    movie_ids: np.ndarray  # int64
    ratings: np.ndarray  # float32, stars
    timestamps: np.ndarray  # int64, epoch seconds

    def __len__(self) -> int:
        return int(self.user_ids.shape[0])

    def subset(self, mask_or_index: np.ndarray) -> Ratings:
        """The rows selected by a boolean mask or an index array, in that order."""
        return Ratings(
            self.user_ids[mask_or_index],
            self.movie_ids[mask_or_index],
            self.ratings[mask_or_index],
            self.timestamps[mask_or_index],
        )


@dataclass(frozen=True)
class MovieLensDataset:
    movies: list[Movie]
    ratings: Ratings
    # movie id -> tags in file order (raw, possibly repeated)
    tags: dict[int, list[str]] = field(default_factory=dict)


def year_from_title(title: str) -> int | None:
    """The release year written at the end of a MovieLens title, if any."""
    match = _TITLE_YEAR.search(title)
    return int(match.group(1)) if match else None


def _require(path: Path, *names: str) -> None:
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{path} is not a MovieLens directory: missing {', '.join(missing)}")


def read_ml_latest_small(path: str | Path) -> MovieLensDataset:
    """Read a MovieLens `latest` directory (movies.csv, ratings.csv, optional tags.csv)."""
    path = Path(path)
    _require(path, "movies.csv", "ratings.csv")
    movies = []
    with open(path / "movies.csv", encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            genres = tuple(g for g in row["genres"].split("|") if g and g != NO_GENRES)
            title = row["title"].strip()
            movies.append(Movie(int(row["movieId"]), title, genres, year_from_title(title)))

    with open(path / "ratings.csv", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        if header[:4] != ["userId", "movieId", "rating", "timestamp"]:
            raise ValueError(f"{path / 'ratings.csv'}: unexpected header {header}")
        rows = list(reader)
    table = np.array(rows, dtype=object).reshape(-1, 4) if rows else np.empty((0, 4), dtype=object)
    ratings = Ratings(
        table[:, 0].astype(np.int64),
        table[:, 1].astype(np.int64),
        table[:, 2].astype(np.float32),
        table[:, 3].astype(np.int64),
    )

    tags: dict[int, list[str]] = defaultdict(list)
    if (path / "tags.csv").is_file():
        with open(path / "tags.csv", encoding="utf-8", newline="") as handle:
            for row in csv.DictReader(handle):
                tag = row["tag"].strip()
                if tag:
                    tags[int(row["movieId"])].append(tag)
    return MovieLensDataset(movies, ratings, dict(tags))


def read_ml_100k(path: str | Path) -> MovieLensDataset:
    """Read an ml-100k directory (u.data, u.item, u.genre)."""
    path = Path(path)
    _require(path, "u.data", "u.item", "u.genre")
    genre_names: dict[int, str] = {}
    for line in (path / "u.genre").read_text(encoding="latin-1").splitlines():
        if line.strip():
            name, index = line.rsplit("|", 1)
            genre_names[int(index)] = name
    movies = []
    for line in (path / "u.item").read_text(encoding="latin-1").splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        flags = fields[5:]
        # "unknown" (index 0) is the dataset's way of saying "no genre".
        genres = tuple(
            genre_names[i] for i, flag in enumerate(flags) if flag == "1" and genre_names.get(i) != "unknown"
        )
        title = fields[1].strip()
        movies.append(Movie(int(fields[0]), title, genres, year_from_title(title)))
    table = np.loadtxt(path / "u.data", dtype=np.int64, delimiter="\t", ndmin=2)
    ratings = Ratings(table[:, 0], table[:, 1], table[:, 2].astype(np.float32), table[:, 3])
    return MovieLensDataset(movies, ratings, {})


def read_movielens(path: str | Path, fmt: str) -> MovieLensDataset:
    """Read a dataset in one of FORMATS."""
    if fmt == "ml-latest-small":
        return read_ml_latest_small(path)
    if fmt == "ml-100k":
        return read_ml_100k(path)
    raise ValueError(f"unknown dataset format {fmt!r} (expected one of {', '.join(FORMATS)})")


def unique_tags(tags: list[str], limit: int = 10) -> list[str]:
    """Tags without case-insensitive repeats, first spelling kept, at most `limit`."""
    seen: set[str] = set()
    kept = []
    for tag in tags:
        key = tag.casefold()
        if key not in seen:
            seen.add(key)
            kept.append(tag)
            if len(kept) == limit:
                break
    return kept
