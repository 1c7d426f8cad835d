"""The on-disk model format: a directory holding

    manifest.json       format, recforge version, model name, typed config, data fingerprint, and the
                        sha256 and size of every other file
    arrays.safetensors  every learned array (safetensors: no code execution on load)
    state.json          JSON-able learned state: vocabularies, scalars, training log
    (extra files)       e.g. a faiss index written by `recforge.retrieval`

Never pickle. Writes go to a temporary directory that is renamed into place, so a crash leaves either
the old artifact or none. Loading checks the manifest, the version, every checksum and size, and raises
`ArtifactError` with what is wrong (truncated, edited, foreign, from a newer recforge).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from recforge._io import atomic_path, sha256_file
from recforge._version import __version__
from recforge.errors import ArtifactError

FORMAT = "recforge-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = "arrays.safetensors"
STATE = "state.json"


def _version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".")[:3] if part.isdigit())


def write_artifact(
    path: str | Path,
    *,
    model: str,
    config: dict[str, Any],
    data_fingerprint: str | None,
    arrays: dict[str, np.ndarray],
    state: dict[str, Any],
    extra_files: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write an artifact directory: `arrays` to safetensors, `state` to JSON, `extra_files` (file name ->
    callable writing that file given a path, e.g. an ANN index) and the manifest that checksums them all.
    Knows nothing of model classes: `Recommender.save` gathers what it passes."""
    path = Path(path)
    with atomic_path(path, is_dir=True) as tmp:
        save_file({name: np.ascontiguousarray(value) for name, value in arrays.items()}, str(tmp / ARRAYS))
        (tmp / STATE).write_text(json.dumps(state, sort_keys=True, default=_json_default))
        for name, writer in (extra_files or {}).items():
            writer(tmp / name)
        files = sorted(p.name for p in tmp.iterdir())
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "recforge_version": __version__,
            "model": model,
            "config": config,
            "data_fingerprint": data_fingerprint,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "metadata": metadata or {},
            "files": {
                name: {"sha256": sha256_file(tmp / name), "bytes": (tmp / name).stat().st_size} for name in files
            },
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return path


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The verified manifest of an artifact directory (checksums, sizes, format and version checked)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a model artifact directory")
    if not manifest_path.exists():
        raise ArtifactError(f"{path} has no {MANIFEST}; not a recforge model artifact")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is corrupted") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: not a recforge model manifest (format {manifest.get('format')!r})")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format {manifest['format_version']} is newer than this recforge supports"
        )
    saved = manifest.get("recforge_version", "0")
    if _version_tuple(saved)[:1] != _version_tuple(__version__)[:1] or _version_tuple(saved) > _version_tuple(
        __version__
    ):
        raise ArtifactError(
            f"{path} was written by recforge {saved}; this is recforge {__version__} (upgrade or re-train)"
        )
    files = manifest.get("files", {})
    for required in (ARRAYS, STATE):
        if required not in files:
            raise ArtifactError(f"{manifest_path} does not list {required}")
    for name, info in files.items():
        file = path / name
        if not file.exists():
            raise ArtifactError(f"{path}: {name} is missing")
        size = file.stat().st_size
        if size != info.get("bytes"):
            raise ArtifactError(
                f"{path}: {name} has {size} bytes, the manifest says {info.get('bytes')} (truncated or edited)"
            )
        if sha256_file(file) != info.get("sha256"):
            raise ArtifactError(f"{path}: {name} does not match its sha256 in the manifest (edited or corrupted)")
    return manifest


def read_artifact(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any]]:
    """(manifest, arrays, state) of a verified artifact directory; `recforge.models.load_model` turns them
    back into a fitted model."""
    path = Path(path)
    manifest = read_manifest(path)
    try:
        arrays = load_file(str(path / ARRAYS))
        state = json.loads((path / STATE).read_text())
    except Exception as exc:
        raise ArtifactError(f"{path}: unreadable arrays or state ({type(exc).__name__}: {exc})") from exc
    return manifest, arrays, state


INDEX_ARRAYS = "index.safetensors"
INDEX_CONFIG = "index.json"


def index_writers(index: Any) -> dict[str, Any]:
    """`extra_files` for `write_artifact` that store a built `VectorIndex` inside the artifact."""

    def arrays(path: Path) -> None:
        save_file({k: np.ascontiguousarray(v) for k, v in index.to_arrays().items()}, str(path))

    def config(path: Path) -> None:
        path.write_text(json.dumps(index.config.model_dump(mode="json"), sort_keys=True))

    return {INDEX_ARRAYS: arrays, INDEX_CONFIG: config}


def read_index(path: str | Path) -> Any:
    """The ANN index stored in a (verified) artifact, or None when it has none."""
    from recforge.retrieval.ann import VectorIndex

    path = Path(path)
    files = read_manifest(path).get("files", {})
    if INDEX_ARRAYS not in files:
        return None
    try:
        config = json.loads((path / INDEX_CONFIG).read_text())
        return VectorIndex.from_arrays(config, load_file(str(path / INDEX_ARRAYS)))
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot restore its index ({type(exc).__name__}: {exc})") from exc
