"""Where a dataset's files come from: an explicit path, `RECFORGE_DATA_DIR`, the cache, or a download.

Downloads are verified against a published checksum before anything is extracted into the cache, and
the extracted folder is moved into place atomically, so a half-finished download never looks complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from recforge._io import atomic_path, sha256_file
from recforge.errors import DatasetNotFoundError

DATA_DIR_ENV = "RECFORGE_DATA_DIR"
CACHE_DIR_ENV = "RECFORGE_CACHE_DIR"


@dataclass(frozen=True)
class RemoteSource:
    """A downloadable archive and how to check it.

    `archive_checksum` is (algorithm, hex digest) of the archive as published; `key_file` and
    `key_sha256` name a file inside the extracted folder whose sha256 is checked after extraction.
    `inner_folder` is the folder inside the zip holding the files.
    """

    url: str
    archive_checksum: tuple[str, str] | None
    inner_folder: str
    key_file: str
    key_sha256: str | None = None


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "recforge"))


def resolve_dataset_dir(
    folder: str,
    path: str | Path | None,
    required: tuple[str, ...],
    remote: RemoteSource | None = None,
    hints: dict[str, str] | None = None,
) -> Path:
    """Find the folder holding a dataset's files, downloading it into the cache if allowed and needed.

    `hints` maps a required file to the loader option that avoids or renames it; a missing file's error
    names that option.
    """
    if path is not None:
        path = Path(path)
        _require(path, required, f"the path you gave ({path})", hints)
        return path
    data_dir = os.environ.get(DATA_DIR_ENV)
    if data_dir:
        candidate = Path(data_dir) / folder
        if candidate.exists():
            _require(candidate, required, f"{DATA_DIR_ENV}/{folder}", hints)
            return candidate
    cached = cache_dir() / folder
    if cached.exists() and all((cached / name).exists() for name in required):
        return cached
    if remote is None:
        raise DatasetNotFoundError(
            f"dataset {folder!r} is not available for download; put its files ({', '.join(required)}) in a folder "
            f"and pass path=..., or set {DATA_DIR_ENV} to a folder containing {folder}/"
        )
    return download(folder, remote)


def split_file_path(path: str | Path | None, file: str | None, default: str) -> tuple[Path | None, str]:
    """(folder, file name) from a loader's `path` and `file` options: `path` may name the folder or the
    file itself; `file` names the file inside the folder (default `default`)."""
    if path is not None and Path(path).is_file():
        path = Path(path)
        if file is not None and file != path.name:
            raise DatasetNotFoundError(f"path names the file {path.name!r} but file={file!r}; give one of them")
        return path.parent, path.name
    return (None if path is None else Path(path)), file or default


def _require(folder: Path, required: tuple[str, ...], label: str, hints: dict[str, str] | None = None) -> None:
    if not folder.exists():
        raise DatasetNotFoundError(f"{label} does not exist")
    missing = [name for name in required if not (folder / name).exists()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())[:12]
        advice = [hints[name] for name in missing if hints and name in hints]
        raise DatasetNotFoundError(
            f"{label} lacks {missing}; expected the files {list(required)} (it holds {present})"
            + ("; " + "; ".join(dict.fromkeys(advice)) if advice else "")
        )


def download(folder: str, remote: RemoteSource) -> Path:
    """Download, verify and extract `remote` into the cache as `folder`; returns the folder."""
    target = cache_dir() / folder
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        archive = Path(work) / "archive.zip"
        try:
            with urllib.request.urlopen(remote.url, timeout=60) as response, open(archive, "wb") as out:
                shutil.copyfileobj(response, out)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            raise DatasetNotFoundError(
                f"could not download {folder} from {remote.url} ({exc}). Offline? Download it elsewhere, unpack it, "
                f"and pass path=<folder> (CLI: --path), or set {DATA_DIR_ENV} to a folder containing {folder}/"
            ) from exc
        if remote.archive_checksum is not None:
            algorithm, expected = remote.archive_checksum
            digest = hashlib.new(algorithm)
            digest.update(archive.read_bytes())
            if digest.hexdigest() != expected:
                raise DatasetNotFoundError(
                    f"{remote.url}: {algorithm} {digest.hexdigest()} does not match the published {expected}; "
                    "refusing it"
                )
        with zipfile.ZipFile(archive) as bundle:
            extract_root = Path(work) / "extract"
            for member in bundle.namelist():  # refuse absolute or parent-relative member names
                if member.startswith("/") or ".." in Path(member).parts:
                    raise DatasetNotFoundError(f"{remote.url}: unsafe member name {member!r} in the archive")
            bundle.extractall(extract_root)
        extracted = extract_root / remote.inner_folder
        if remote.key_sha256 is not None and sha256_file(extracted / remote.key_file) != remote.key_sha256:
            raise DatasetNotFoundError(f"{remote.url}: {remote.key_file} has an unexpected sha256; refusing it")
        with atomic_path(target, is_dir=True, ours=None) as tmp:  # recforge's own cache
            shutil.rmtree(tmp)
            shutil.copytree(extracted, tmp)
    return target
