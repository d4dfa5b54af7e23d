"""The prefix cache: pipelines after a recipe's structure + training transforms, shared by trials.

An entry is content-addressed by what determines its weights: the model's weights digest, the
canonical configs of the prefix, the identity of the training data and the library versions. It
is an artifact folder (`compress apply`'s format, so `compress.load` replays it) plus
`entry.json` with the SHA-256 of every file. Entries are built under a temporary name and
renamed into place (the first writer wins; nothing is ever half-written), and verified on every
load: an entry that does not verify is moved aside and retrained, never trusted.

Olive keys its run cache by pass configs the same way; nothing in diffusers or Ray caches trained
pipelines across processes and nodes, hence this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.fs import atomic_folder, file_digests, file_lock, write_atomic

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.recipe import Recipe
    from compress.transforms.base import TransformConfig

ENTRY_FILE = "entry.json"
ARTIFACT = "artifact"
DATA_VERSION = "miniature-digits-1"  # bump when the built-in training digits change


def data_identity(data: str | None, prompts_file: str | None) -> dict[str, Any]:
    """What identifies the training data: file names, sizes and modification times of an image
    folder (cheap to take for any size); the text of a prompts file; or the built-in digits."""
    out: dict[str, Any] = {"builtin": DATA_VERSION}
    if data:
        folder = Path(data)
        files = sorted(p for p in folder.rglob("*") if p.is_file())
        digest = hashlib.sha256()
        for p in files:
            st = p.stat()
            name = p.relative_to(folder).as_posix()
            digest.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        out["images"] = {"files": len(files), "sha256": digest.hexdigest()}
    if prompts_file:
        out["prompts_sha256"] = hashlib.sha256(Path(prompts_file).read_bytes()).hexdigest()
    return out


def prefix_key(
    weights: str, prefix: list[TransformConfig], data: dict[str, Any], versions: dict[str, str]
) -> str:
    """The entry name: SHA-256 of the canonical JSON of everything the weights depend on."""
    canonical = json.dumps(
        {
            "weights": weights,
            "prefix": [c.model_dump(mode="json") for c in prefix],
            "data": data,
            "versions": versions,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class PrefixCache:
    """A folder of verified prefix entries, with per-key locks and training work folders."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def entry(self, key: str) -> Path:
        return self.root / key

    def work_dir(self, key: str) -> Path:
        """Checkpoints of the training that leads to `key` (a later rung resumes from them)."""
        return self.root / "work" / key

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        """Held while building `key`: a second trial needing it waits, then finds it cached.
        (On storage without working flock the atomic rename alone keeps entries whole.)"""
        with file_lock(self.root / "locks" / f"{key}.lock"):
            yield

    def lookup(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The verified artifact folder of `key` and its entry record, or None (absent, or
        corrupt: then moved aside so that it is rebuilt)."""
        folder = self.entry(key)
        meta_path = folder / ENTRY_FILE
        if not meta_path.is_file():
            return None
        problem = None
        try:
            meta = json.loads(meta_path.read_text())
            if file_digests(folder / ARTIFACT) != meta["files"]:
                problem = "its files do not match their recorded SHA-256"
        except (OSError, ValueError, KeyError) as exc:
            problem = f"its entry record is unreadable ({exc})"
        if problem is not None:
            aside = self.root / "corrupt" / f"{key}-{int(time.time())}"
            aside.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.suppress(OSError):
                os.replace(folder, aside)
            raise CorruptEntry(f"cache entry {folder} is corrupt ({problem}); moved to {aside}")
        return folder / ARTIFACT, meta

    def store(
        self, key: str, pipe: DiffusionPipeline, recipe: Recipe, info: dict[str, Any]
    ) -> Path:
        """Save `pipe` (with its applied prefix recipe) as the entry of `key`, atomically."""
        from compress.artifact import save_artifact

        with atomic_folder(self.entry(key)) as tmp:  # the first writer wins
            save_artifact(pipe, recipe, tmp / ARTIFACT)
            meta = {"key": key, **info, "files": file_digests(tmp / ARTIFACT)}
            write_atomic(tmp / ENTRY_FILE, json.dumps(meta, indent=2, default=str))
        return self.entry(key) / ARTIFACT


class CorruptEntry(Exception):
    """A cache entry failed verification (it has been moved aside; the caller rebuilds it)."""
