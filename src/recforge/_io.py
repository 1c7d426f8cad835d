"""Small file helpers shared by loaders, reports and artifacts: atomic writes and checksums."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from recforge.errors import OutputExistsError


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large files do not load into memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(
    target: str | Path, *, is_dir: bool = False, ours: tuple[str, ...] | None = (), kind: str = "output"
) -> Iterator[Path]:
    """Yield a temporary path next to `target`; put it in place of `target` only if the block succeeds.

    A folder replaces only an empty folder or one an earlier write of the same kind left: one holding any
    of the file names in `ours` (an artifact's manifest.json, a report's report.md; None: any folder, for
    recforge's own cache). Anything else at `target` (a file where a folder goes, a folder where a file
    goes, a folder of other files) raises OutputExistsError before anything is written: replacing it would
    delete what the user keeps there.

    Readers see the old content or the complete new content, never a mix, and `target` never goes
    missing: the written content is fsynced, then a file is renamed over the target, and a directory is
    swapped with the existing one in a single `renameat2(RENAME_EXCHANGE)` (Linux; elsewhere a rename
    that leaves an instant without the target). The old directory is then removed; temporary directories
    a killed process left behind (`.<name>.*.tmp`) are removed by the next write to the same target.
    """
    target = Path(target)
    check_output(target, is_dir, ours, kind)
    target.parent.mkdir(parents=True, exist_ok=True)
    if is_dir:
        _remove_stale_temporaries(target)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", suffix=".tmp", dir=target.parent))
        os.chmod(tmp, 0o777 & ~_umask())
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the result should look like open() made it
        os.close(fd)
        tmp = Path(name)
    try:
        yield tmp
        if is_dir:  # some writers (safetensors) create 0600 files; give them what open() would
            for child in tmp.rglob("*"):
                if child.is_file() and not child.is_symlink():
                    os.chmod(child, 0o666 & ~_umask())
        fsync_tree(tmp)
        if is_dir and target.exists():
            if _exchange(tmp, target):  # tmp now holds the old content
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                backup = target.with_name(f".{target.name}.{os.getpid()}.old.tmp")
                os.replace(target, backup)
                os.replace(tmp, target)
                shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_directory(target.parent)
    except BaseException:
        if is_dir:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise


def check_output(target: Path, is_dir: bool, ours: tuple[str, ...] | None = (), kind: str = "output") -> None:
    """Raise OutputExistsError when `atomic_path` would refuse `target` (see there): commands call it
    before a long fit or experiment, so a bad output path fails at once, not after the work."""
    target = Path(target)
    if not (target.exists() or target.is_symlink()):
        return
    if not is_dir:
        if target.is_dir():
            raise OutputExistsError(f"{target} is a folder; the {kind} is a file: give a file name")
        return
    if not target.is_dir():
        raise OutputExistsError(f"{target} is a file; the {kind} is a folder: give another name (nothing was written)")
    if ours is None:
        return
    if any(target.iterdir()) and not any((target / name).exists() for name in ours):
        listed = " or ".join(ours) if ours else "nothing of its own"
        raise OutputExistsError(
            f"{target} is a folder of other files (it holds no {listed}, so it is not a {kind} recforge "
            f"wrote); replacing it would delete them: give a new folder, or empty this one (nothing was written)"
        )


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only set; /proc has it on Linux)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    return 0o022


def fsync_tree(path: Path) -> None:
    """fsync a file, or every file of a directory tree and the directories themselves."""
    if path.is_dir():
        for child in path.rglob("*"):
            if child.is_file() and not child.is_symlink():
                _fsync_file(child)
        for folder in [*(p for p in path.rglob("*") if p.is_dir()), path]:
            _fsync_directory(folder)
    elif path.exists():
        _fsync_file(path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import ctypes.util
    import sys

    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _remove_stale_temporaries(target: Path) -> None:
    """Remove `.<name>.<pid>.*.tmp` directories whose writing process is gone (killed mid-save)."""
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        pid = stale.name[len(target.name) + 2 :].split(".", 1)[0]
        if stale.is_dir() and not stale.is_symlink() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it; a failed write removes its own
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """JSON with sorted keys and a trailing newline, so equal payloads give byte-identical files."""
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, allow_nan=True) + "\n")
