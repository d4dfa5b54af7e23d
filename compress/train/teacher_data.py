"""Teacher-drawn training data, drawn once and shared: the clean latents a teacher samples for a
run's prompts are the same for every trial that asks for the same (teacher weights, prompts,
sampler settings, count, seed), so they are content-addressed and kept on disk beside the prefix
cache, where every trial on every node that mounts it finds them.

An entry is a folder of safetensors shards: latents (`SHARD` samples a file, in the teacher's own
dtype) with each sample's prompt index, and the text conditioning once per distinct prompt (a
prompt list shorter than the sample count repeats, and SD's 77 x 768 text states weigh four
times a 64 x 64 latent). Training streams them (`StreamedLatents` reads one sample's rows from
the memory-mapped shards), so neither the latents nor the embeddings are held in memory.
Building is resumable (finished shards stay in the work folder), serialised by a lock, renamed
into place whole, and verified (SHA-256 of every file) when opened.

Ray, datasets and diffusers have no store for generated training latents keyed by the
generator's identity; this module is that store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.fs import atomic_folder, file_digests, file_lock, write_atomic
from compress.versions import library_versions

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch.utils.data import DataLoader

    from compress.train.diffusion import Cond

log = logging.getLogger("compress.train")
SHARD = 256  # samples or prompts a file; a multiple of teacher_latents' batch (16): same floats
ENTRY = "entry.json"
VERSION = 1  # bump when the layout changes


def weights_fingerprint(pipe: DiffusionPipeline) -> str:
    """SHA-256 over every weight of the pipeline's modules (what the teacher is), for when no
    digest of its files is at hand (a pipeline already in memory)."""
    import torch

    digest = hashlib.sha256()
    for name, module in sorted(pipe.components.items()):
        if not isinstance(module, torch.nn.Module):
            continue
        for key, tensor in sorted(module.state_dict().items()):
            digest.update(f"{name}.{key}:{tensor.dtype}:{tuple(tensor.shape)}\n".encode())
            data = tensor.detach().cpu().contiguous()
            digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def data_fields(
    teacher: DiffusionPipeline, prompts: list[str], n: int, seed: int, steps: int, digest: str
) -> dict[str, Any]:
    """Everything the drawn latents depend on."""
    from compress.generate import call_defaults
    from compress.train.diffusion import sample_size

    scheduler = teacher.scheduler
    return {
        "version": VERSION,
        "teacher": digest,
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "prompts": len(prompts),
        "samples": n,
        "seed": seed,
        "steps": steps,
        "scheduler": [type(scheduler).__name__, dict(scheduler.config)],
        "call": call_defaults(teacher),
        "size": sample_size(teacher),
        "versions": library_versions(),
    }


def teacher_latents(
    teacher: DiffusionPipeline, prompts: list[str], seed: int, steps: int
) -> torch.Tensor:
    """Clean latents the teacher generates for `prompts` (its own sampler and guidance)."""
    import torch

    from compress.generate import generate

    out = []
    for i in range(0, len(prompts), 16):
        chunk = prompts[i : i + 16]
        z = generate(
            teacher,
            chunk,
            [seed + i + j for j in range(len(chunk))],
            output_type="latent",
            num_inference_steps=steps,
        )
        out.append(torch.as_tensor(z).float().cpu())
    return torch.cat(out)


def data_key(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class StreamedLatents:
    """A drawn dataset read from its shards: LatentDataset's interface (items, `uncond`,
    `loader`) without holding the data in memory."""

    def __init__(self, folder: Path) -> None:
        from safetensors.torch import load_file

        self.folder = folder
        meta = json.loads((folder / ENTRY).read_text())
        self.samples, self.keys = int(meta["samples"]), list(meta["cond_keys"])
        self.uncond: Cond = load_file(folder / "uncond.safetensors")
        self._handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return self.samples

    def _open(self, name: str) -> Any:
        from safetensors import safe_open

        if name not in self._handles:
            self._handles[name] = safe_open(self.folder / name, "pt")
        return self._handles[name]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if not 0 <= i < self.samples:
            raise IndexError(i)
        shard = self._open(f"latents-{i // SHARD:05d}.safetensors")
        j = i % SHARD
        latents = shard.get_slice("latents")[j : j + 1][0].float()
        p = int(shard.get_slice("prompt")[j : j + 1][0])
        cond = self._open(f"cond-{p // SHARD:05d}.safetensors")
        k = p % SHARD
        return {
            "latents": latents,
            **{key: cond.get_slice(key)[k : k + 1][0].float() for key in self.keys},
        }

    def loader(self, batch_size: int, seed: int) -> DataLoader:
        import torch
        from torch.utils.data import DataLoader

        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            self,  # type: ignore[arg-type]
            batch_size=min(batch_size, len(self)),
            shuffle=True,
            drop_last=True,
            generator=gen,
        )


def drawn_dataset(
    root: Path,
    teacher: DiffusionPipeline,
    captions: list[str],
    *,
    seed: int,
    steps: int,
    digest: str | None = None,
) -> StreamedLatents:
    """The teacher's latents for `captions` (sample i drawn with seed + i), from the store at
    `root`, drawn there first if no trial has drawn them yet."""
    digest = digest or weights_fingerprint(teacher)
    key = data_key(data_fields(teacher, captions, len(captions), seed, steps, digest))
    final = root / key
    found = _verified(final)
    if found is not None:
        log.info("teacher data %s from the shared store (%d samples)", key, len(found))
        return found
    with file_lock(root / "locks" / f"{key}.lock"):
        found = _verified(final)  # drawn by another trial while this one waited
        if found is not None:
            return found
        work = root / f".{key}.partial"
        with atomic_folder(final, work=work) as folder:
            _draw(folder, teacher, captions, seed=seed, steps=steps, key=key)
    found = _verified(final)
    if found is None:
        raise CompressError(f"teacher data {final} did not verify right after it was drawn")
    return found


def _verified(folder: Path) -> StreamedLatents | None:
    """The entry at `folder`, or None when absent; a corrupt entry is moved aside (redrawn)."""
    meta_path = folder / ENTRY
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        files = {k: v for k, v in file_digests(folder).items() if k != ENTRY}
        if files != meta["files"]:
            raise ValueError("its files do not match their recorded SHA-256")
        return StreamedLatents(folder)
    except (OSError, ValueError, KeyError) as exc:
        aside = folder.parent / "corrupt" / f"{folder.name}-{int(time.time())}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        folder.rename(aside)
        log.warning(
            "teacher data %s is corrupt (%s); moved to %s, drawing again", folder, exc, aside
        )
        return None


def _draw(
    folder: Path,
    teacher: DiffusionPipeline,
    captions: list[str],
    *,
    seed: int,
    steps: int,
    key: str,
) -> None:
    """Fill `folder`: conditioning per distinct prompt, latent shards, then the entry record.
    Shards already in `folder` (an interrupted draw) are kept."""
    import torch
    from safetensors.torch import save_file

    from compress.models.denoiser import denoiser
    from compress.train.diffusion import encode_prompts

    t0 = time.perf_counter()
    distinct = list(dict.fromkeys(captions))
    index = {p: i for i, p in enumerate(distinct)}
    dtype = denoiser(teacher).dtype
    keys: list[str] = []
    for s in range(0, len(distinct), SHARD):
        cond = encode_prompts(teacher, distinct[s : s + SHARD])
        keys = sorted(cond)
        _save(
            folder / f"cond-{s // SHARD:05d}.safetensors",
            {k: v.to(dtype) for k, v in cond.items()},
            save_file,
        )
    save_file(encode_prompts(teacher, [""]), folder / "uncond.safetensors")
    for s in range(0, len(captions), SHARD):
        path = folder / f"latents-{s // SHARD:05d}.safetensors"
        if path.is_file():
            continue  # drawn before an interruption
        chunk = captions[s : s + SHARD]
        latents = teacher_latents(teacher, chunk, seed + s, steps).to(dtype)
        prompt = torch.tensor([index[c] for c in chunk], dtype=torch.int64)
        _save(path, {"latents": latents.contiguous(), "prompt": prompt}, save_file)
        log.info("teacher data %s: %d of %d samples drawn", key, s + len(chunk), len(captions))
    files = file_digests(folder)
    meta = {
        "key": key,
        "samples": len(captions),
        "distinct_prompts": len(distinct),
        "cond_keys": keys,
        "dtype": str(dtype).removeprefix("torch."),
        "draw_s": time.perf_counter() - t0,
        "bytes": sum((folder / f).stat().st_size for f in files),
        "files": files,
    }
    write_atomic(folder / ENTRY, json.dumps(meta, indent=2))


def _save(path: Path, tensors: dict[str, Any], save_file: Any) -> None:
    """A shard written under a temporary name, then renamed (a resumed draw trusts it)."""
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, tmp)
    tmp.rename(path)
