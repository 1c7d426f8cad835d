"""The on-disk model format: a directory holding

    manifest.json       format, recforge version, model name, typed config, data fingerprint, and the
                        sha256 and size of every other file
    arrays.safetensors  every learned array (safetensors: no code execution on load)
    state.json          JSON-able learned state: vocabularies, scalars, training log
    (extra files)       e.g. a faiss index written by `recforge.retrieval`

Never pickle. Writes go to a temporary directory, are fsynced, and replace the target in one atomic
exchange (`recforge._io.atomic_path`): a crash at any point leaves the old artifact or the new one, never
none and never a mix. Loading validates the manifest against a schema, checks the version, and checks that
every file it names is a regular file inside the directory (no `..`, no symlinks, no devices or FIFOs)
whose size and sha256 match; only files the manifest lists are ever read (`artifact_file`), and arrays
holding NaN or infinity are refused. Every problem is an `ArtifactError` saying what is wrong.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors.numpy import load_file, save_file

from recforge._io import atomic_path, check_output, sha256_file
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
    with atomic_path(path, is_dir=True, ours=(MANIFEST,), kind=_KIND) as tmp:
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


_KIND = "model artifact"


def check_artifact_output(path: str | Path) -> None:
    """Refuse, before any work, an artifact path that `write_artifact` would refuse (a file, or a folder of
    other files: replacing it would delete them)."""
    check_output(Path(path), True, (MANIFEST,), _KIND)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"cannot store {type(value).__name__} in state.json")


class _FileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class Manifest(BaseModel):
    """The manifest's schema: wrong types or missing fields are an ArtifactError, not a traceback."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    format: str
    format_version: int = Field(ge=1)
    recforge_version: str = Field(pattern=r"^\d+\.\d+\.\d+")
    model: str = Field(min_length=1, max_length=100)
    config: dict[str, Any]
    data_fingerprint: str | None
    created: str
    metadata: dict[str, Any] = Field(default_factory=dict)
    files: dict[str, _FileEntry]


# a file name an artifact may list: one path component, no hidden or parent entries
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The verified manifest of an artifact directory (schema, format, version, and every listed file's
    type, location, size and checksum)."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise ArtifactError(f"{path} is not a model artifact directory")
    if not manifest_path.exists():
        raise ArtifactError(f"{path} has no {MANIFEST}; not a recforge model artifact")
    _require_regular(path, MANIFEST)
    try:
        payload = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{manifest_path} is not valid JSON ({exc}); the artifact is corrupted") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ArtifactError(f"{manifest_path}: not a recforge model manifest (format {found!r})")
    try:
        manifest = Manifest.model_validate(payload).model_dump()
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise ArtifactError(f"{manifest_path}: malformed manifest ({problems})") from exc
    if manifest["format_version"] > FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: artifact format {manifest['format_version']} is newer than this recforge supports"
        )
    saved = manifest["recforge_version"]
    if _version_tuple(saved)[:1] != _version_tuple(__version__)[:1] or _version_tuple(saved) > _version_tuple(
        __version__
    ):
        raise ArtifactError(
            f"{path} was written by recforge {saved}; this is recforge {__version__} (upgrade or re-train)"
        )
    files = manifest["files"]
    for required in (ARRAYS, STATE):
        if required not in files:
            raise ArtifactError(f"{manifest_path} does not list {required}")
    for name, info in files.items():
        if not _SAFE_NAME.match(name) or name == MANIFEST:
            raise ArtifactError(f"{manifest_path} lists {name!r}, which is not a plain file name in the artifact")
        _require_regular(path, name)
        size = (path / name).stat().st_size
        if size != info["bytes"]:
            raise ArtifactError(
                f"{path}: {name} has {size} bytes, the manifest says {info['bytes']} (truncated or edited)"
            )
        if sha256_file(path / name) != info["sha256"]:
            raise ArtifactError(f"{path}: {name} does not match its sha256 in the manifest (edited or corrupted)")
    return manifest


def _require_regular(folder: Path, name: str) -> None:
    """`folder/name` must be a regular file (not a symlink, device, FIFO or directory) inside `folder`."""
    file = folder / name
    try:
        info = os.lstat(file)
    except FileNotFoundError as exc:
        raise ArtifactError(f"{folder}: {name} is missing") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{folder}: {name} is not a regular file (a link, device, FIFO or folder is refused)")
    if file.resolve().parent != folder.resolve():
        raise ArtifactError(f"{folder}: {name} is outside the artifact directory")


def artifact_file(path: str | Path, name: str, required: bool = True) -> Path | None:
    """The path of a file the (verified) manifest lists; an unlisted file is never read: missing and
    `required` is an ArtifactError, missing and optional is None."""
    path = Path(path)
    files = read_manifest(path)["files"]
    if name not in files:
        if required:
            raise ArtifactError(f"{path}: its manifest does not list {name}")
        return None
    return path / name


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
    for name, array in arrays.items():
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ArtifactError(f"{path}: array {name!r} holds NaN or infinite values; refusing the model")
    if not isinstance(state, dict):
        raise ArtifactError(f"{path}: {STATE} is not a JSON object")
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
    arrays_path = artifact_file(path, INDEX_ARRAYS, required=False)
    if arrays_path is None:
        return None
    config_path = artifact_file(path, INDEX_CONFIG)
    try:
        config = json.loads(config_path.read_text())  # type: ignore[union-attr]
        return VectorIndex.from_arrays(config, load_file(str(arrays_path)))
    except Exception as exc:
        raise ArtifactError(f"{path}: cannot restore its index ({type(exc).__name__}: {exc})") from exc
