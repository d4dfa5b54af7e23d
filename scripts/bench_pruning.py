"""Pruning figures in one run: UNet parameters and MACs per preset (full-size architectures with
meta weights, and the miniature), the miniature's CPU latency ratio, and its judge score before
pruning, right after, and after recovery distillation. With --gpu-arch, the full-size GPU latency
ratio per preset (random weights).

    python scripts/bench_pruning.py                       # everything on CPU (miniature + sizes)
    python scripts/bench_pruning.py --only sizes          # parameters and MACs only
    python scripts/bench_pruning.py --only latency        # the miniature's CPU latency ratios
    python scripts/bench_pruning.py --only gpu --gpu-arch sd15 --device cuda
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path
from typing import Any

PRESETS = ("base", "small", "tiny")
# Published BK-SDM U-Net sizes (Kim et al. 2023, Table 1), for comparison with our own count.
BK_SDM = {"none": (860, 339), "base": (580, 224), "small": (483, 218), "tiny": (323, 206)}


def arch_inputs(arch: str, unet: Any) -> dict[str, Any]:
    """One denoiser call at the architecture's native resolution (meta tensors: shapes only)."""
    import torch

    side = 128 if arch == "sdxl" else 96 if arch == "sd21" else 64
    cross = unet.config.cross_attention_dim
    x = {
        "sample": torch.empty(1, 4, side, side, device="meta"),
        "timestep": torch.tensor([500], device="meta"),
        "encoder_hidden_states": torch.empty(1, 77, cross, device="meta"),
    }
    if arch == "sdxl":
        x["added_cond_kwargs"] = {
            "text_embeds": torch.empty(1, 1280, device="meta"),
            "time_ids": torch.empty(1, 6, device="meta"),
        }
    return x


def macs(unet: Any, inputs: dict[str, Any]) -> tuple[float, float]:
    """(MACs, params) from torch-pruning's counter (conv, linear and norm layers; the attention
    matmuls inside scaled_dot_product_attention are not layers and are not counted)."""
    import contextlib
    import io

    import torch_pruning as tp

    with contextlib.redirect_stdout(io.StringIO()):  # the counter prints batch-size guesses
        m, p = tp.utils.count_ops_and_params(unet, inputs)
    return float(m), float(p)


def prune(pipe: Any, transforms: list[Any], ctx: Any = None) -> Any:
    from compress.apply import apply_recipe
    from compress.recipe import Recipe

    return apply_recipe(pipe, Recipe(name="bench", transforms=transforms), ctx)


def variants(channel_ratios: list[float]) -> list[tuple[str, list[Any]]]:
    from compress.transforms.prune.blocks import PruneBlocksConfig
    from compress.transforms.prune.channels import PruneChannelsConfig

    out: list[tuple[str, list[Any]]] = [(p, [PruneBlocksConfig(preset=p)]) for p in PRESETS]
    out += [(f"channels {r}", [PruneChannelsConfig(ratio=r)]) for r in channel_ratios]
    return out


def channel_sizes(arch: str, ratios: list[float]) -> list[dict[str, Any]]:
    """Channel pruning needs real weights (magnitudes): a random-weight full-size UNet on CPU."""
    from compress.models.archs import build_arch_pipeline

    base = build_arch_pipeline(arch, device="cpu")
    real = arch_inputs(arch, base.unet)
    inputs = {
        k: v if not hasattr(v, "device") else v.new_zeros(v.shape, device="cpu")
        for k, v in real.items()
        if k != "added_cond_kwargs"
    }
    if "added_cond_kwargs" in real:
        inputs["added_cond_kwargs"] = {
            k: v.new_zeros(v.shape, device="cpu") for k, v in real["added_cond_kwargs"].items()
        }
    inputs["timestep"] = inputs["timestep"] + 500
    m0, p0 = macs(base.unet, inputs)
    rows = []
    for name, tfs in variants(ratios)[len(PRESETS) :]:
        pipe = copy.deepcopy(base)
        prune(pipe, tfs)
        m, p = macs(pipe.unet, inputs)
        rows.append(
            {
                "model": arch,
                "variant": name,
                "params_m": p / 1e6,
                "macs_g": m / 1e9,
                "params_ratio": p / p0,
                "macs_ratio": m / m0,
            }
        )
        del pipe
    return rows


def sizes(archs: list[str], model: str, channel_ratios: list[float]) -> list[dict[str, Any]]:
    """Params and MACs before and after each preset; meta weights for full-size architectures."""
    from compress.errors import CompressError
    from compress.models.archs import build_arch_pipeline
    from compress.models.loading import load_pipeline
    from compress.models.unet import example_inputs

    rows = []
    for arch in [*archs, model]:
        full = arch != model
        try:
            base = build_arch_pipeline(arch, device="meta") if full else load_pipeline(model)
        except CompressError as exc:
            rows.append({"model": arch, "variant": "none", "error": str(exc)})
            continue
        inputs = arch_inputs(arch, base.unet) if full else example_inputs(base.unet)
        m0, p0 = macs(base.unet, inputs)
        rows.append({"model": arch, "variant": "none", "params_m": p0 / 1e6, "macs_g": m0 / 1e9})
        for name, tfs in variants([] if full else channel_ratios):
            pipe = copy.deepcopy(base)
            try:
                prune(pipe, tfs)
            except CompressError as exc:
                rows.append({"model": arch, "variant": name, "error": str(exc).split(";")[0]})
                continue
            m, p = macs(pipe.unet, inputs)
            rows.append(
                {
                    "model": arch,
                    "variant": name,
                    "params_m": p / 1e6,
                    "macs_g": m / 1e9,
                    "params_ratio": p / p0,
                    "macs_ratio": m / m0,
                }
            )
    return rows


def miniature_architecture(model: str) -> tuple[Any, str]:
    """`model` (the miniature by default), else its architecture untrained (latency only)."""
    from diffusers import StableDiffusionPipeline

    from compress.errors import CompressError
    from compress.models.loading import load_pipeline
    from compress.models.miniature import build as b

    try:
        return load_pipeline(model), "trained"
    except CompressError:
        if model != "miniature":
            raise
        tok = b.build_tokenizer()
        pipe = StableDiffusionPipeline(
            vae=b.build_vae(),
            text_encoder=b.build_text_encoder(tok),
            tokenizer=tok,
            unet=b.build_unet(),
            scheduler=b.build_scheduler(),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe, "untrained (latency does not depend on weight values)"


def latency(model: str, channel_ratios: list[float], runs: int) -> list[dict[str, Any]]:
    """CPU latency of the miniature per variant (20 steps, guidance 4, one image), timed in
    interleaved rounds so that load from other processes falls on every variant alike."""
    import statistics

    from compress.errors import CompressError
    from compress.evaluate.latency import iqr, measure_latency
    from compress.evaluate.settings import EvalSettings

    base, weights = miniature_architecture(model)
    warm = EvalSettings(steps=20, guidance_scale=4.0, timed_runs=1, warmup=2)
    once = warm.model_copy(update={"warmup": 0})
    pipes: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    for name, tfs in [("none", []), *variants(channel_ratios)]:
        pipe = copy.deepcopy(base)
        try:
            if tfs:
                prune(pipe, tfs)
        except CompressError as exc:
            rows.append({"variant": name, "error": str(exc).split(";")[0]})
            continue
        measure_latency(pipe, warm)
        pipes[name] = pipe
    times: dict[str, list[float]] = {n: [] for n in pipes}
    unet: dict[str, list[float]] = {n: [] for n in pipes}
    for _ in range(runs):
        for name, pipe in pipes.items():
            lat = measure_latency(pipe, once)
            times[name].append(lat.median_ms)
            unet[name].append(lat.components_ms.get("denoiser", 0.0))
    ref = statistics.median(times["none"])
    for name in pipes:
        med = statistics.median(times[name])
        rows.append(
            {
                "variant": name,
                "weights": weights,
                "latency_ms": med,
                "spread_ms": iqr(times[name]),
                "unet_ms": statistics.median(unet[name]),
                "ratio": med / ref,
                "threads": lat.threads,
            }
        )
    order = ["none", *(n for n, _ in variants(channel_ratios))]
    return sorted(rows, key=lambda r: order.index(r["variant"]))


def quality(
    model: str,
    channel_ratios: list[float],
    steps: int,
    prompts: int,
    runs: int,
    batch: int,
    judge: str | None = None,
) -> list[dict[str, Any]]:
    """Judge score and CPU latency: unpruned, right after pruning, after recovery (distill)."""
    from compress.context import RunContext
    from compress.errors import CompressError
    from compress.evaluate.quality.miniature import MiniatureMetric
    from compress.evaluate.run import evaluate
    from compress.evaluate.settings import EvalSettings
    from compress.models.loading import load_pipeline
    from compress.transforms.distill.recovery import DistillConfig, apply_distill

    settings = EvalSettings(metric="miniature", num_prompts=prompts, timed_runs=runs, warmup=1)
    metric = MiniatureMetric(weights=judge)  # judge None: the shipped judge
    base = load_pipeline(model)
    s0 = evaluate(base, settings, metric=metric)
    rows = [
        {
            "variant": "none",
            "stage": "unpruned",
            "quality": s0.quality,
            "adherence": s0.quality_parts["adherence"],
            "fd": s0.quality_parts["realism_fd"],
            "latency_ms": s0.latency_ms,
            "latency_ratio": 1.0,
        }
    ]

    def row(name: str, stage: str, s: Any, **extra: Any) -> dict[str, Any]:
        print(f"  {name} {stage}: quality {s.quality:.4f} {extra}", file=sys.stderr, flush=True)
        return {
            "variant": name,
            "stage": stage,
            "quality": s.quality,
            "adherence": s.quality_parts["adherence"],
            "fd": s.quality_parts["realism_fd"],
            "latency_ms": s.latency_ms,
            "latency_ratio": s.latency_ms / s0.latency_ms,
            **extra,
        }

    for name, tfs in variants(channel_ratios):
        pipe = copy.deepcopy(base)
        try:
            prune(pipe, tfs)
        except CompressError as exc:
            rows.append({"variant": name, "stage": "n/a", "error": str(exc).split(";")[0]})
            continue
        rows.append(row(name, "pruned", evaluate(pipe, settings, metric=metric)))
        ctx = RunContext(teacher=base)
        t = time.perf_counter()
        apply_distill(
            pipe,
            DistillConfig(
                steps=steps, batch_size=batch, samples=1437, lr=5e-4, data="miniature-digits"
            ),
            ctx,
        )
        train_s = time.perf_counter() - t
        rows.append(
            row(
                name,
                f"recovered ({steps} steps)",
                evaluate(pipe, settings, metric=metric),
                train_s=train_s,
            )
        )
    return rows


def gpu_latency(arch: str, device: str, runs: int) -> list[dict[str, Any]]:
    """Full-size latency per preset with random weights (fp16, native resolution, 25 steps)."""
    from compress.errors import CompressError
    from compress.evaluate.latency import measure_latency
    from compress.evaluate.settings import EvalSettings
    from compress.models.archs import build_arch_pipeline

    side = {"sd15": 512, "sd21": 768, "sdxl": 1024}[arch]
    settings = EvalSettings(
        device=device,
        dtype="float16",
        resolution=side,
        steps=25,
        guidance_scale=7.5,
        timed_runs=runs,
        warmup=2,
    )
    rows = []
    base_ms = None
    for name, tfs in [("none", []), *variants([])]:
        pipe = build_arch_pipeline(arch, device=device, dtype="float16")
        try:
            if tfs:
                prune(pipe, tfs)
        except CompressError as exc:
            rows.append({"arch": arch, "variant": name, "error": str(exc).split(";")[0]})
            continue
        lat = measure_latency(pipe, settings)
        base_ms = base_ms or lat.median_ms
        rows.append(
            {
                "arch": arch,
                "variant": name,
                "latency_ms": lat.median_ms,
                "spread_ms": lat.spread_ms,
                "unet_ms": lat.components_ms.get("denoiser"),
                "ratio": lat.median_ms / base_ms,
                "device": lat.device_name,
            }
        )
        del pipe
    return rows


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)

    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    out += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["sizes", "latency", "quality", "gpu"], action="append")
    ap.add_argument("--model", default="miniature")
    ap.add_argument("--archs", nargs="*", default=["sd15", "sdxl"])
    ap.add_argument("--channel-ratios", nargs="*", type=float, default=[0.25, 0.5])
    ap.add_argument("--channel-archs", nargs="*", default=["sd15"], help="random weights, CPU")
    ap.add_argument("--recovery-steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--judge", default=None, help="judge safetensors (default: the shipped)")
    ap.add_argument("--gpu-arch", default="sd15")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    parts = args.only or ["sizes", "latency", "quality"]
    from compress._quiet import import_heavy

    import_heavy()
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv)}
    if "sizes" in parts:
        result["sizes"] = sizes(args.archs, args.model, args.channel_ratios)
        for arch in args.channel_archs:
            result["sizes"] += channel_sizes(arch, args.channel_ratios)
        print("## Parameters and MACs (one UNet call)\n")
        print(
            table(
                result["sizes"],
                ["model", "variant", "params_m", "params_ratio", "macs_g", "macs_ratio", "error"],
            )
            + "\n"
        )
        print(f"BK-SDM published (params M, MACs G) for SD1.4: {BK_SDM}\n")
    if "latency" in parts:
        result["latency"] = latency(args.model, args.channel_ratios, args.runs)
        print("## Miniature: CPU latency per variant\n")
        print(
            table(
                result["latency"],
                [
                    "variant",
                    "weights",
                    "latency_ms",
                    "spread_ms",
                    "unet_ms",
                    "ratio",
                    "threads",
                    "error",
                ],
            )
            + "\n"
        )
    if "quality" in parts:
        result["quality"] = quality(
            args.model,
            args.channel_ratios,
            args.recovery_steps,
            args.prompts,
            args.runs,
            args.batch,
            args.judge,
        )
        print("## Miniature: judge score and CPU latency\n")
        print(
            table(
                result["quality"],
                [
                    "variant",
                    "stage",
                    "quality",
                    "adherence",
                    "fd",
                    "latency_ms",
                    "latency_ratio",
                    "train_s",
                    "error",
                ],
            )
            + "\n"
        )
    if "gpu" in parts:
        result["gpu"] = gpu_latency(args.gpu_arch, args.device, args.runs)
        print(f"## {args.gpu_arch} latency on {args.device}\n")
        print(
            table(
                result["gpu"],
                [
                    "arch",
                    "variant",
                    "latency_ms",
                    "spread_ms",
                    "unet_ms",
                    "ratio",
                    "device",
                    "error",
                ],
            )
            + "\n"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
