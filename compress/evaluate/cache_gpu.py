"""GPU rows of reports/caching.md: DeepCache on full-size SD 1.5 (published architecture, random
float16 weights, 512 px, 25 steps, guidance 7.5), paired speed-up against the uncached pipeline.

Run on the target GPU: `python -m compress.evaluate.cache_gpu --device cuda`.
"""

from __future__ import annotations

import argparse
import copy
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# (interval, branch): SD 1.5's UNet has 12 skip connections, branches 0-10; 0 is the paper's
# fastest setting, 3 keeps the whole first down block (with its downsampler) shallow.
ROWS = ((3, 0), (3, 3), (5, 0), (5, 3))
STEPS, GUIDANCE, SIZE = 25, 7.5, 512


def cached_sd15(
    interval: int,
    branch: int,
    *,
    device: str = "cuda",
    dtype: str = "float16",
    base: DiffusionPipeline | None = None,
) -> tuple[DiffusionPipeline, dict[str, Any]]:
    """A cached copy of `base` (default: a random-weight SD 1.5 on `device`) and what the
    cache recorded."""
    from compress.apply import apply_recipe
    from compress.models.archs import build_arch_pipeline
    from compress.recipe import Recipe
    from compress.transforms.cache import CacheConfig
    from compress.transforms.sampler import SamplerConfig

    base = base if base is not None else build_arch_pipeline("sd15", device=device, dtype=dtype)
    pipe = copy.deepcopy(base)
    recipe = Recipe(
        name=f"deepcache-{interval}-{branch}",
        transforms=[
            SamplerConfig(steps=STEPS, guidance_scale=GUIDANCE),
            CacheConfig(interval=interval, branch=branch),
        ],
    )
    return pipe, apply_recipe(pipe, recipe).records[-1].metadata


def measure_rows(device: str, rounds: int) -> list[dict[str, Any]]:
    """Each row's paired speed-up (median and 95% interval) over the uncached pipeline."""
    from compress.evaluate.paired import paired_latency
    from compress.evaluate.settings import EvalSettings
    from compress.models.archs import build_arch_pipeline
    from compress.transforms.cache import cache_stats

    base = build_arch_pipeline("sd15", device=device, dtype="float16")
    settings = EvalSettings(
        device=device, dtype="float16", resolution=SIZE, steps=STEPS, guidance_scale=GUIDANCE
    )
    rows = []
    for interval, branch in ROWS:
        pipe, meta = cached_sd15(interval, branch, base=base)
        timing = paired_latency(pipe, {"uncached": (base, settings)}, settings, rounds=rounds)
        r = timing.speedup["uncached"]
        rows.append(
            {
                "interval": interval,
                "branch": branch,
                "full_calls": cache_stats(pipe)["full_calls"],
                "recorded_full_calls": meta["full_calls"],
                "ms": timing.median_ms(),
                "uncached_ms": timing.median_ms("uncached"),
                "speedup": [r.median, r.low, r.high],
            }
        )
        print(rows[-1], flush=True)
        del pipe
    return rows


def markdown(rows: list[dict[str, Any]], device_name: str) -> str:
    lines = [
        f"SD 1.5, random float16 weights, {SIZE} px, {STEPS} steps, guidance {GUIDANCE}, "
        f"{device_name}:",
        "",
        "| interval | branch | full calls/image | ms | uncached ms | paired speed-up (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, lo, hi = r["speedup"]
        lines.append(
            f"| {r['interval']} | {r['branch']} | {r['full_calls']} of {STEPS} | {r['ms']:.0f} | "
            f"{r['uncached_ms']:.0f} | {m:.2f}x [{lo:.2f}, {hi:.2f}] |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from compress._quiet import import_heavy
    from compress.evaluate.latency import device_name
    from compress.evaluate.run import check_device

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    import_heavy()
    check_device(args.device)
    import torch

    print(markdown(measure_rows(args.device, args.rounds), device_name(torch.device(args.device))))


if __name__ == "__main__":
    main()
