"""Training data for denoiser fine-tuning: clean latents with their captions' conditioning.

Sources: a local folder of images with captions, prompts alone (the teacher generates the
images), or the built-in miniature's composed digits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.train.diffusion import Cond, encode_prompts, sample_size

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch.utils.data import DataLoader

    from compress.context import RunContext
    from compress.train.teacher_data import StreamedLatents

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class LatentDataset:
    """Clean latents (N, C, h, w) and per-sample conditioning; items are dicts of tensors."""

    def __init__(self, latents: torch.Tensor, cond: Cond, uncond: Cond) -> None:
        n = latents.shape[0]
        if any(v.shape[0] != n for v in cond.values()):
            raise ValueError("latents and conditioning must have the same number of samples")
        self.latents, self.cond, self.uncond = latents, cond, uncond

    def __len__(self) -> int:
        return self.latents.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"latents": self.latents[i], **{k: v[i] for k, v in self.cond.items()}}

    def loader(self, batch_size: int, seed: int) -> DataLoader:
        import torch
        from torch.utils.data import DataLoader

        gen = torch.Generator().manual_seed(seed)
        return DataLoader(
            self,
            batch_size=min(batch_size, len(self)),
            shuffle=True,  # type: ignore[arg-type]
            drop_last=True,
            generator=gen,
        )


def read_image_folder(folder: Path) -> tuple[list[Path], list[str]]:
    """Images and captions: `metadata.jsonl` lines {"file_name", "text"} or `<image>.txt` files."""
    if not folder.is_dir():
        raise CompressError(f"training data folder {folder} does not exist")
    meta = folder / "metadata.jsonl"
    if meta.is_file():
        rows = [json.loads(line) for line in meta.read_text().splitlines() if line.strip()]
        bad = [r for r in rows if "file_name" not in r or "text" not in r]
        if bad:
            raise CompressError(f"{meta}: every line needs 'file_name' and 'text', e.g. {bad[0]}")
        paths, captions = [folder / r["file_name"] for r in rows], [str(r["text"]) for r in rows]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise CompressError(f"{meta} names images that do not exist: {missing[:3]}")
        return paths, captions
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise CompressError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    lacking = [p.name for p in paths if not p.with_suffix(".txt").is_file()]
    if lacking:
        raise CompressError(
            f"{folder}: images without a caption file (<name>.txt) or metadata.jsonl: {lacking[:3]}"
        )
    return paths, [p.with_suffix(".txt").read_text().strip() for p in paths]


def load_images(paths: list[Path], size: int) -> torch.Tensor:
    """(N, 3, size, size) in [0, 1]: shorter side resized to `size`, centre-cropped."""
    import numpy as np
    import torch
    from PIL import Image, ImageOps

    out = []
    for p in paths:
        with Image.open(p) as im:
            im = ImageOps.fit(im.convert("RGB"), (size, size), Image.Resampling.BICUBIC)
            out.append(torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0).permute(2, 0, 1))
    return torch.stack(out)


def encode_images(
    pipe: DiffusionPipeline, images: torch.Tensor, seed: int, batch: int = 32
) -> torch.Tensor:
    """Latents of (N, 3, H, W) images in [0, 1], scaled as the denoiser sees them."""
    import torch

    vae = pipe.vae
    gen = torch.Generator(vae.device).manual_seed(seed)
    shift = getattr(vae.config, "shift_factor", None) or 0.0
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            x = (images[i : i + batch] * 2 - 1).to(vae.device, vae.dtype)
            z = vae.encode(x).latent_dist.sample(gen)
            out.append(((z - shift) * vae.config.scaling_factor).float().cpu())
    return torch.cat(out)


def miniature_digits(n: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """`n` composed training digits (images in [0, 1]) and prompts naming some attributes."""
    import numpy as np

    from compress.models.miniature import data as digits

    glyphs, labels = digits.load_split("train")
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(labels), size=n, replace=n > len(labels))
    attrs = digits.sample_attributes(rng, labels[pick])
    return digits.compose(glyphs[pick], attrs), digits.random_prompts(rng, attrs)


def speaks_miniature(pipe: DiffusionPipeline) -> bool:
    """True when the pipeline's tokenizer is the built-in miniature's (its digits prompts fit)."""
    try:
        from compress.models.miniature.build import build_tokenizer
    except ImportError:  # a build without the miniature
        return False
    tok = getattr(pipe, "tokenizer", None)
    return tok is not None and tok.get_vocab() == build_tokenizer().get_vocab()


def calibration_prompts(pipe: DiffusionPipeline, ctx: RunContext, n: int) -> list[str]:
    """`n` prompts: the run's own, else the captions of its image folder, else the miniature's
    digits prompts when the pipeline is it."""
    import numpy as np

    prompts = ctx.prompts or (read_image_folder(Path(ctx.data))[1] if ctx.data else [])
    if prompts:
        return [prompts[i % len(prompts)] for i in range(n)]
    if speaks_miniature(pipe):
        from compress.models.miniature import data as digits

        rng = np.random.default_rng(ctx.seed)
        _, labels = digits.load_split("train")
        return digits.random_prompts(rng, digits.sample_attributes(rng, rng.choice(labels, n)))
    raise CompressError(
        "calibration needs prompts: --prompts FILE (RunContext.prompts) or --data with captions"
    )


def build_dataset(
    pipe: DiffusionPipeline,
    source: str,
    *,
    n: int,
    seed: int,
    folder: Path | None = None,
    prompts: list[str] | None = None,
    teacher: DiffusionPipeline | None = None,
    teacher_steps: int = 20,
    store: Path | None = None,
    teacher_digest: str | None = None,
) -> tuple[LatentDataset | StreamedLatents, dict[str, Any]]:
    """The dataset for `source` ("images", "prompts" or "miniature-digits") and a description.
    With `store`, teacher-drawn data comes from (or is drawn once into) that shared folder and
    is streamed from disk."""
    if source == "images":
        if folder is None:
            raise CompressError("data source 'images' needs a folder of images with captions")
        paths, captions = read_image_folder(Path(folder))
        latents = encode_images(pipe, load_images(paths, sample_size(pipe)), seed)
        info: dict[str, Any] = {"source": "images", "samples": len(paths)}
    elif source == "prompts":
        if not prompts:
            raise CompressError("data source 'prompts' needs a list of prompts")
        if teacher is None:
            raise CompressError("data source 'prompts' needs a teacher to generate the images")
        captions = [prompts[i % len(prompts)] for i in range(n)]
        info = {
            "source": "prompts",
            "samples": n,
            "prompts": len(prompts),
            "teacher_steps": teacher_steps,
        }
        if store is not None:
            from compress.train.teacher_data import drawn_dataset

            drawn = drawn_dataset(
                store, teacher, captions, seed=seed, steps=teacher_steps, digest=teacher_digest
            )
            return drawn, info
        from compress.train.teacher_data import teacher_latents

        latents = teacher_latents(teacher, captions, seed, teacher_steps)
    elif source == "miniature-digits":
        images, captions = miniature_digits(n, seed)
        latents = encode_images(pipe, images, seed)
        info = {"source": "miniature-digits", "samples": n}
    else:
        raise CompressError(
            f"unknown data source {source!r}; use images, prompts or miniature-digits"
        )
    cond = encode_prompts(pipe, captions)
    uncond = encode_prompts(pipe, [""])
    return LatentDataset(latents, cond, uncond), info
