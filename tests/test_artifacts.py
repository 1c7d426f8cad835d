"""Model artifacts: atomic, verified, never unpickled; every kind of damage is named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from recforge import load
from recforge.artifacts import MANIFEST, read_manifest
from recforge.errors import ArtifactError
from recforge.models import create_model
from tests.conftest import make_interactions


@pytest.fixture
def saved(tmp_path):
    model = create_model("ials", n_factors=4, n_iterations=2).fit(make_interactions())
    return model, model.save(tmp_path / "model")


def test_manifest_records_config_version_fingerprint_and_checksums(saved):
    model, path = saved
    manifest = read_manifest(path)
    assert manifest["model"] == "ials" and manifest["config"]["n_factors"] == 4
    assert manifest["data_fingerprint"] == model.fitted_on_
    assert set(manifest["files"]) == {"arrays.safetensors", "state.json"}
    assert all(len(f["sha256"]) == 64 for f in manifest["files"].values())


def test_truncated_file_is_refused(saved):
    _, path = saved
    arrays = path / "arrays.safetensors"
    arrays.write_bytes(arrays.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match="truncated or edited"):
        load(path)


def test_edited_file_is_refused(saved):
    _, path = saved
    state = path / "state.json"
    content = bytearray(state.read_bytes())
    content[5] = ord("X") if content[5] != ord("X") else ord("Y")  # same size, different bytes
    state.write_bytes(bytes(content))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        load(path)


def test_foreign_and_missing_manifests(tmp_path, saved):
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        load(tmp_path)
    _, path = saved
    (path / MANIFEST).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ArtifactError, match="not a recforge model manifest"):
        load(path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(ArtifactError, match="not valid JSON"):
        load(path)


def test_newer_version_is_refused(saved):
    _, path = saved
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["recforge_version"] = "99.0.0"
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=r"written by recforge 99\.0\.0"):
        load(path)


def test_overwrite_is_atomic_and_loads_the_new_model(tmp_path):
    data = make_interactions()
    first = create_model("most_popular").fit(data)
    second = create_model("ials", n_factors=3, n_iterations=1).fit(data)
    path = first.save(tmp_path / "m")
    second.save(path)
    loaded = load(path)
    assert loaded.name == "ials"
    np.testing.assert_allclose(loaded.score(np.arange(3)), second.score(np.arange(3)))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_no_pickle_anywhere_in_the_package():
    import pathlib

    import recforge

    root = pathlib.Path(recforge.__file__).parent
    for source in root.rglob("*.py"):
        text = source.read_text()
        for unpickler in ("pickle.load", "joblib.load", "torch.load(", "np.load(", "allow_pickle=True"):
            assert unpickler not in text, (source, unpickler)
