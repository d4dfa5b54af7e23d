"""Files written whole, and locks between processes: a file or a folder is built under a
temporary name beside its final one and renamed into place, so a reader (on this node or another
that mounts the folder) never sees half of it; a lock file serialises builders (filelock, which
uses flock where the file system has it).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def write_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write to a temporary name beside `path`, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike[str], work: Path | None = None) -> Iterator[Path]:
    """Yield a folder to fill; on success it becomes `final` (when another writer got there
    first, theirs stands and this one is dropped); on failure nothing is left but `work`, a
    resumable folder the caller named, if any."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = work or Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.partial-"))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        yield tmp
        try:
            os.rename(tmp, final)
        except OSError:  # `final` exists: the first writer wins
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        if work is None:
            shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on `path` (created if missing) inside the block."""
    from filelock import FileLock

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path)):
        yield


def file_digests(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under `folder`, by relative path."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            with p.open("rb") as fh:
                out[p.relative_to(folder).as_posix()] = hashlib.file_digest(
                    fh, "sha256"
                ).hexdigest()
    return out
