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


def test_a_catalogue_saved_with_the_model_gives_the_service_its_titles(tmp_path):
    import pandas as pd

    from recforge.errors import ConfigError
    from recforge.serving.service import RecommenderService

    data = make_interactions()
    model = create_model("ials", n_factors=4, n_iterations=2).fit(data)
    ids = data.items.ids.tolist()
    titles = pd.DataFrame({"item_id": ids, "title": [f"Film {i}" for i in ids], "genres": [["Drama"]] * len(ids)})
    path = model.save(tmp_path / "titled", catalogue=titles)
    assert "items.parquet" in read_manifest(path)["files"]
    service = RecommenderService.from_artifact(path)
    assert service.current().catalogue.titles == titles["title"].tolist()
    assert service.find_item(f"film {ids[3]}") == ids[3]
    texts = titles.assign(genres="Drama|Comedy")  # a text column, not lists: refused, never dropped
    with pytest.raises(ConfigError, match=rf"item {ids[0]!r}: genres must be a list of names"):
        model.save(tmp_path / "texts", catalogue=texts)
    with pytest.raises(ConfigError, match="more than once"):
        model.save(tmp_path / "twice", catalogue=pd.concat([titles, titles.head(1)]))
    assert not (tmp_path / "texts").exists() and not (tmp_path / "twice").exists()


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


def test_a_save_never_replaces_what_recforge_did_not_write(tmp_path):
    """`model.save(folder)` swapped the folder for the artifact and deleted the old one: saving into a
    project folder deleted the project, and a file in the way was moved to a hidden leftover. Now only an
    empty folder or an earlier output of the same kind is replaced; anything else is refused untouched."""
    from recforge.errors import OutputExistsError

    data = make_interactions()
    model = create_model("most_popular").fit(data)
    project = tmp_path / "project"
    project.mkdir()
    (project / "thesis.tex").write_text("precious")
    with pytest.raises(OutputExistsError, match=r"project is a folder of other files \(it holds no manifest.json"):
        model.save(project)
    assert [p.name for p in project.iterdir()] == ["thesis.tex"] and (project / "thesis.tex").read_text() == "precious"
    (tmp_path / "notes.csv").write_text("a,b\n")
    with pytest.raises(OutputExistsError, match=r"notes\.csv is a file; the model artifact is a folder"):
        model.save(tmp_path / "notes.csv")
    assert (tmp_path / "notes.csv").read_text() == "a,b\n"
    (tmp_path / "empty").mkdir()
    assert load(model.save(tmp_path / "empty")).name == "most_popular"  # an empty folder is fine
    data.save(tmp_path / "interactions")  # each kind recognises its own earlier output, not another's
    with pytest.raises(OutputExistsError, match="not a model artifact"):
        model.save(tmp_path / "interactions")
    with pytest.raises(OutputExistsError, match="not a saved interactions folder"):
        data.save(tmp_path / "empty")
    data.save(tmp_path / "interactions")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_no_pickle_anywhere_in_the_package():
    import pathlib

    import recforge

    root = pathlib.Path(recforge.__file__).parent
    for source in root.rglob("*.py"):
        text = source.read_text()
        for unpickler in ("pickle.load", "joblib.load", "torch.load(", "np.load(", "allow_pickle=True"):
            assert unpickler not in text, (source, unpickler)


def test_links_fifos_and_paths_outside_are_refused(tmp_path, saved):
    import os

    _, path = saved
    state = path / "state.json"
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(state.read_bytes())
    state.unlink()
    state.symlink_to(outside)  # same bytes, so only the file type can give it away
    with pytest.raises(ArtifactError, match="not a regular file"):
        load(path)
    state.unlink()
    os.mkfifo(state)  # reading a FIFO would block forever; it must be refused before any read
    with pytest.raises(ArtifactError, match="not a regular file"):
        load(path)
    state.unlink()
    state.write_bytes(outside.read_bytes())
    manifest = json.loads((path / MANIFEST).read_text())
    manifest["files"]["../elsewhere.json"] = manifest["files"]["state.json"]
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="not a plain file name"):
        load(path)


def test_unlisted_files_are_ignored_and_never_read(saved):
    import os

    model, path = saved
    os.mkfifo(path / "stray.fifo")  # an unlisted FIFO would hang any loader that opened it
    (path / "notes.txt").write_text("left by an operator")
    loaded = load(path)
    np.testing.assert_allclose(loaded.score(np.arange(3)), model.score(np.arange(3)))


def test_saved_files_get_ordinary_permissions(saved):
    import stat

    _, path = saved
    assert stat.S_IMODE(path.stat().st_mode) & 0o055 == 0o055  # group/others can read and enter
    for file in path.iterdir():
        assert stat.S_IMODE(file.stat().st_mode) & 0o044 == 0o044, file


def test_a_save_killed_midway_leaves_the_previous_model(tmp_path):
    """SIGKILL while a large model is being written: the target still loads as the old model, and the next
    save cleans up what the killed process left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    data = make_interactions()
    old = create_model("most_popular").fit(data)
    path = old.save(tmp_path / "m")
    script = (
        "import sys, numpy as np\n"
        "from recforge.models import create_model\n"
        "from tests.conftest import make_interactions\n"
        "m = create_model('ials', n_factors=4, n_iterations=1).fit(make_interactions())\n"
        "m.item_factors_ = np.random.default_rng(0).random((4_000_000, 4), dtype=np.float32)\n"
        "print('saving', flush=True)\n"
        "m.save(sys.argv[1])\n"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(path)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "saving"
    deadline = time.monotonic() + 30
    while not list(tmp_path.glob(".m.*.tmp")) and time.monotonic() < deadline:
        time.sleep(0.001)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert list(tmp_path.glob(".m.*.tmp")), "the child finished before it could be killed mid-save"
    assert load(path).name == "most_popular"
    create_model("most_popular").fit(data).save(path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize(
    ("model_name", "params", "matrix"),
    [
        ("rp3beta", {}, "weights"),
        ("item_knn", {"feedback": "implicit", "similarity": "cosine"}, "neighbours"),
        ("ials", {"n_factors": 4, "n_iterations": 2}, "seen"),
    ],
)
@pytest.mark.parametrize("damage", ["index out of range", "indptr not monotonic"])
def test_a_stored_sparse_matrix_that_does_not_fit_is_refused(tmp_path, model_name, params, matrix, damage):
    """The checksums cover what was written; a writer that wrote a bad CSR (or a forged, re-signed file)
    is stopped when the matrix is rebuilt, before scipy's compiled loops index with it."""
    model = create_model(model_name, **params).fit(make_interactions())
    arrays, state = model.get_state()
    arrays = dict(arrays)
    if damage == "index out of range":
        indices = arrays[f"{matrix}.indices"].copy()
        indices[0] = 10**6
        arrays[f"{matrix}.indices"] = indices
    else:
        indptr = arrays[f"{matrix}.indptr"].copy()
        indptr[1], indptr[2] = indptr[2] + 1, indptr[1]
        arrays[f"{matrix}.indptr"] = indptr
    model.get_state = lambda: (arrays, state)
    path = model.save(tmp_path / "bad")
    with pytest.raises(ArtifactError, match=f"the stored {matrix} matrix does not fit"):
        load(path)
