"""MovieLens readers on the bundled latest-small data and a tiny ml-100k layout."""

from pathlib import Path

import pytest

from recfleet_models.data import read_ml_100k, read_ml_latest_small, read_movielens, unique_tags, year_from_title

BUNDLED = Path(__file__).resolve().parents[2] / "data" / "ml-latest-small"


def test_bundled_latest_small():
    data = read_ml_latest_small(BUNDLED)
    assert len(data.movies) == 9742
    assert len(data.ratings) == 100836
    toy_story = next(m for m in data.movies if m.movie_id == 1)
    assert toy_story.title == "Toy Story (1995)"  # no trailing CR from the CRLF file
    assert toy_story.genres == ("Adventure", "Animation", "Children", "Comedy", "Fantasy")
    assert toy_story.year == 1995
    assert any(not m.genres for m in data.movies)  # "(no genres listed)" -> no category
    assert "(no genres listed)" not in {g for m in data.movies for g in m.genres}
    assert data.ratings.ratings.min() == 0.5 and data.ratings.ratings.max() == 5.0
    assert "pixar" in data.tags[1]


def test_ml_100k_layout(tmp_path):
    (tmp_path / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t5\t891717742\n")
    (tmp_path / "u.genre").write_text("unknown|0\nAction|1\nComedy|2\n\n")
    flags_242 = "0|0|1"
    flags_302 = "1|0|0"
    (tmp_path / "u.item").write_bytes(
        (
            f"242|Kolya (1996)|24-Jan-1997||http://x|{flags_242}\n"
            f"302|L\xe9on (1994)|01-Jan-1994||http://y|{flags_302}\n"
        ).encode("latin-1")
    )
    data = read_ml_100k(tmp_path)
    assert [(m.movie_id, m.title, m.genres, m.year) for m in data.movies] == [
        (242, "Kolya (1996)", ("Comedy",), 1996),
        (302, "L\xe9on (1994)", (), 1994),
    ]
    assert data.ratings.user_ids.tolist() == [196, 186]
    assert data.ratings.ratings.tolist() == [3.0, 5.0]


def test_missing_files_and_unknown_format(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"movies\.csv"):
        read_ml_latest_small(tmp_path)
    with pytest.raises(ValueError, match="unknown dataset format"):
        read_movielens(tmp_path, "ml-1m")


def test_years_and_tags():
    assert year_from_title("Babylon 5 (1994)") == 1994
    assert year_from_title("Fawlty Towers (1975-1979)") == 1975
    assert year_from_title("Cosmos") is None
    assert unique_tags(["Pixar", "pixar", "fun"] + [f"t{i}" for i in range(20)]) == ["Pixar", "fun"] + [
        f"t{i}" for i in range(8)
    ]
