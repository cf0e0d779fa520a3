"""The ranker artifact format: a written version loads back; a tampered one is refused."""

import pytest
from recfleet_store.artifacts import DirectoryArtifactStore

from recfleet_models.ranking.artifacts import ModelLoadError, artifact_prefix, load_ranker, write_ranker
from recfleet_models.ranking.learned import FEATURE_NAMES


def test_written_version_loads_back_with_its_feature_names(artifact_dir, popularity_model):
    store = DirectoryArtifactStore(artifact_dir)
    write_ranker(store, "ranker-a", *popularity_model)
    ranker = load_ranker(store, "ranker-a")
    assert ranker.version == "ranker-a" and ranker.feature_names == FEATURE_NAMES


def test_tampered_or_missing_version_is_refused(artifact_dir, popularity_model):
    store = DirectoryArtifactStore(artifact_dir)
    write_ranker(store, "ranker-a", *popularity_model)
    store.put_bytes(artifact_prefix("ranker-a") + "model.txt", b"tree\n")
    with pytest.raises(ModelLoadError, match=r"checksum mismatch for model\.txt"):
        load_ranker(store, "ranker-a")
    with pytest.raises(ModelLoadError, match="ranker-missing"):
        load_ranker(store, "ranker-missing")
