"""Quantization sensitivity: quantize one block at a time and measure the quality drop it causes
(the per-block analysis behind mixed precision, as in Q-Diffusion's and HAWQ's layer studies)."""

from __future__ import annotations

import copy
import csv
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from compress.context import RunContext
from compress.errors import CompressError
from compress.fs import write_atomic
from compress.transforms.quantize.backends import FORMATS
from compress.transforms.quantize.ptq import (
    PROTECTED,
    QuantizeConfig,
    apply_quantize,
    backend_module,
    resolve,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

    from compress.evaluate.quality import Metric
    from compress.evaluate.settings import EvalSettings

BASELINE = "(none)"


class Row(BaseModel):
    """One block in one format: its quality and the drop from the full-precision pipeline."""

    block: str
    format: str
    layers: int
    quality: float
    drop: float  # full-precision quality minus this one (positive: worse), in the metric's units
    metric: str
    metric_version: str


def blocks(pipe: DiffusionPipeline, protect: list[str] | None = None) -> list[str]:
    """The denoiser's top-level blocks that hold quantizable (unprotected Linear) layers: a
    UNet's down, mid and up blocks, a diffusion transformer's transformer blocks."""
    from compress.models.denoiser import denoiser

    unet = denoiser(pipe)
    protect = list(PROTECTED) if protect is None else protect
    if hasattr(unet, "down_blocks"):
        names = [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
        names += ["mid_block"] if getattr(unet, "mid_block", None) is not None else []
        names += [f"up_blocks.{i}" for i in range(len(unet.up_blocks))]
    else:
        names = [f"transformer_blocks.{i}" for i in range(len(unet.transformer_blocks))]
    out = []
    for name in names:
        cfg = QuantizeConfig(rules=[{"match": name, "format": "int8_dynamic"}], protect=protect)
        try:
            if resolve(unet, cfg)[0]:
                out.append(name)
        except CompressError:  # a block without Linear layers (e.g. a plain ResNet block)
            continue
    return out


def sensitivity(
    pipe: DiffusionPipeline,
    formats: list[str],
    settings: EvalSettings,
    *,
    metric: Metric | None = None,
    protect: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[Row]:
    """Rows for the full-precision baseline and each (block, format), one block quantized."""
    from compress.evaluate.quality import get_metric
    from compress.evaluate.run import generate_images, place
    from compress.models.denoiser import denoiser, denoiser_attr

    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise CompressError(f"unknown formats {unknown}; choose from {', '.join(FORMATS)}")
    protect = list(PROTECTED) if protect is None else protect
    names = blocks(pipe, protect)
    for fmt in formats:  # every combination must be possible before minutes of generation
        backend = backend_module(FORMATS[fmt].backend)
        for name in names:
            cfg = QuantizeConfig(rules=[{"match": name, "format": fmt}], protect=protect)
            backend.check(denoiser(pipe), resolve(denoiser(pipe), cfg)[0], settings.device)
    metric = metric or get_metric(settings.metric, device=settings.device)
    prompts, seeds = metric.prompts(settings.num_prompts)
    seeds = [s + settings.seed for s in seeds]
    place(pipe, settings)
    reference = generate_images(pipe, prompts, seeds, settings)
    needs_ref = getattr(metric, "needs_reference", False)

    def score(images: list[Any]) -> float:
        return metric.score(images, prompts, reference_images=reference if needs_ref else None)[0]

    base = score(reference)
    sign = 1.0 if metric.higher_is_better else -1.0
    rows = [
        Row(
            block=BASELINE,
            format="full precision",
            layers=0,
            quality=base,
            drop=0.0,
            metric=metric.name,
            metric_version=metric.version,
        )
    ]
    original, attr = denoiser(pipe), denoiser_attr(pipe)
    try:
        for fmt in formats:
            for name in names:
                if progress:
                    progress(f"{name} -> {fmt}")
                pipe.register_modules(**{attr: copy.deepcopy(original)})
                cfg = QuantizeConfig(rules=[{"match": name, "format": fmt}], protect=protect)
                meta = apply_quantize(pipe, cfg, RunContext(device=settings.device))
                q = score(generate_images(pipe, prompts, seeds, settings))
                rows.append(
                    Row(
                        block=name,
                        format=fmt,
                        layers=len(meta["modules"]),
                        quality=q,
                        drop=sign * (base - q),
                        metric=metric.name,
                        metric_version=metric.version,
                    )
                )
    finally:
        pipe.register_modules(**{attr: original})
    return rows


def allowed_formats(rows: list[Row], max_drop: float) -> dict[str, list[str]]:
    """Per block, the formats whose drop stays within `max_drop` (narrows a search space)."""
    out: dict[str, list[str]] = {}
    for r in rows:
        if r.block != BASELINE:
            out.setdefault(r.block, [])
            if r.drop <= max_drop:
                out[r.block].append(r.format)
    return out


def write_table(rows: list[Row], path: str | os.PathLike[str]) -> Path:
    """The table as CSV (`.csv`) or JSON (`.json`), written atomically."""
    path = Path(path)
    data = [r.model_dump() for r in rows]
    if path.suffix == ".json":
        write_atomic(path, json.dumps(data, indent=2) + "\n")
    elif path.suffix == ".csv":
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(Row.model_fields))
        writer.writeheader()
        writer.writerows(data)
        write_atomic(path, buf.getvalue())
    else:
        raise CompressError(f"--out {path}: the table is written as .csv or .json")
    return path


def read_table(path: str | os.PathLike[str]) -> list[Row]:
    """Rows written by `write_table` (.csv or .json)."""
    path = Path(path)
    if not path.is_file():
        raise CompressError(
            f"sensitivity table {path} not found; write it with `compress sensitivity`"
        )
    if path.suffix == ".json":
        return [Row.model_validate(r) for r in json.loads(path.read_text())]
    if path.suffix == ".csv":
        return [Row.model_validate(r) for r in csv.DictReader(io.StringIO(path.read_text()))]
    raise CompressError(f"sensitivity table {path}: expected .csv or .json")
