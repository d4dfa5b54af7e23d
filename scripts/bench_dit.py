"""Diffusion-transformer figures: transformer parameters and MACs of block removal on the
full-size architectures (published configs, meta weights: no memory, no checkpoint), and each
technique applied to a trained transformer pipeline (the DiT miniature): its quality and its
CPU speed-up over the uncompressed pipeline, timed in alternating rounds in one process.

    python scripts/bench_dit.py --only sizes --json reports/dit-sizes.json
    python scripts/bench_dit.py --only techniques --model miniature-dit --json reports/dit.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

ARCHS = ("pixart-sigma", "sd3-medium", "sana-600m")
# (name, prune_blocks fields): the dit-fast preset, two heavier presets
VARIANTS = [
    ("none", None),
    ("every 7 (dit-fast)", {"every": 7}),
    ("every 4", {"every": 4}),
    ("last 4", {"last": 4}),
]
# text positions each pipeline feeds its transformer at its default call
TOKENS = {"pixart-sigma": 300, "sd3-medium": 77 + 256, "sana-600m": 300}


def transformer(arch: str) -> Any:
    """The architecture's transformer from its published config, on the meta device."""
    import diffusers
    import torch

    from compress.models.archs import arch_config

    cfg = arch_config(arch, "transformer")
    cls = getattr(diffusers, cfg.pop("_class_name"))
    with torch.device("meta"):
        return cls.from_config(cfg).eval()


def inputs(arch: str, net: Any) -> dict[str, Any]:
    """One transformer call at the native 1024 px resolution, batch 1 (meta tensors)."""
    from compress.transforms.prune._dit import example_inputs

    return example_inputs(net, tokens=TOKENS[arch])


def macs(net: Any, kwargs: dict[str, Any]) -> float:
    """Multiply-accumulates of one call: torch's FLOP counter (linear, convolution and the
    attention matmuls inside scaled_dot_product_attention) halved."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(**kwargs)
    return counter.get_total_flops() / 2


def sizes(archs: list[str]) -> list[dict[str, Any]]:
    from compress.transforms.prune._dit import preset_blocks, remove_blocks

    rows = []
    for arch in archs:
        base = transformer(arch)
        kw = inputs(arch, base)
        p0, m0 = sum(p.numel() for p in base.parameters()), macs(base, kw)
        for name, fields in VARIANTS:
            net = base
            if fields is not None:
                removed = preset_blocks(base, fields.get("every"), fields.get("last"))
                net = remove_blocks(copy.deepcopy(base), removed)
            p, m = sum(x.numel() for x in net.parameters()), macs(net, kw)
            inside = sum(x.numel() for x in net.transformer_blocks.parameters())
            rows.append(
                {
                    "model": arch,
                    "variant": name,
                    "blocks": int(net.config.num_layers),
                    "outside_blocks_share": 1 - inside / p,
                    "params_m": p / 1e6,
                    "params_ratio": p / p0,
                    "macs_g": m / 1e9,
                    "macs_ratio": m / m0,
                }
            )
    return rows


def techniques(train_steps: int) -> list[tuple[str, list[Any]]]:
    """(name, transforms) for each technique, training budgets scaled by `train_steps`."""
    from compress.recipe import load_recipe
    from compress.transforms.distill.guidance import DistillGuidanceConfig
    from compress.transforms.distill.recovery import DistillConfig
    from compress.transforms.distill.steps import DistillStepsConfig
    from compress.transforms.prune.blocks import PruneBlocksConfig
    from compress.transforms.prune.channels import PruneChannelsConfig
    from compress.transforms.quantize.ptq import QuantizeConfig
    from compress.transforms.runtime.sampler import SamplerConfig

    n = train_steps
    train = {"steps": n, "batch_size": 32, "samples": 1437}
    recover = DistillConfig(lr=5e-4, **train)
    fast = load_recipe(Path(__file__).parents[1] / "recipes" / "dit-fast.yaml").transforms
    off = [{"match": "re:.*", "format": "none"}]

    def quant(fmt: str) -> Any:
        return QuantizeConfig(attention=fmt, feed_forward=fmt, rules=off)

    student = DistillStepsConfig(
        method="trajectory", student_steps=4, lr=2e-4, guidance_scale=4.0, **train
    )
    return [
        ("sampler: 4 steps", [SamplerConfig(steps=4, guidance_scale="pipeline")]),
        ("quantize int8_weight_only", [quant("int8_weight_only")]),
        ("quantize int8_dynamic", [quant("int8_dynamic")]),
        ("prune_blocks every 3", [PruneBlocksConfig(every=3)]),
        ("prune_blocks every 3 + distill", [PruneBlocksConfig(every=3), recover]),
        ("prune_blocks importance 2 + distill", [PruneBlocksConfig(importance=2), recover]),
        ("prune_channels 0.25 + distill", [PruneChannelsConfig(ratio=0.25), recover]),
        ("distill_guidance", [DistillGuidanceConfig(lr=2e-4, **train)]),
        ("distill_steps trajectory, 4 steps", [student]),
        ("dit-fast (recipe)", list(fast)),
    ]


def measure(model: str, settings: Any, runs: int, train_steps: int, only: list[str]) -> list[dict]:
    """The baseline and each technique: quality (the metric) and paired CPU speed-up."""
    import copy
    import time

    from compress.apply import apply_recipe
    from compress.context import RunContext
    from compress.evaluate.paired import paired_latency
    from compress.evaluate.quality import get_metric
    from compress.evaluate.run import generate_images
    from compress.models.loading import load_pipeline
    from compress.recipe import Recipe

    base = load_pipeline(model)
    metric = get_metric(settings.metric, device=settings.device)
    prompts, seeds = metric.prompts(settings.num_prompts)

    def quality(pipe: Any) -> tuple[float, dict[str, float]]:
        value, parts = metric.score(generate_images(pipe, prompts, seeds, settings), prompts)
        return value, parts

    q0, parts0 = quality(base)
    rows = [{"technique": "none", "quality": q0, **parts0}]
    for name, transforms in techniques(train_steps):
        if only and not any(o in name for o in only):
            continue
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        pipe, start = copy.deepcopy(base), time.perf_counter()
        recipe = apply_recipe(pipe, Recipe(name="bench", transforms=transforms), RunContext())
        took = time.perf_counter() - start
        q, parts = quality(pipe)
        pair = paired_latency(pipe, {"baseline": (base, settings)}, settings, rounds=runs)
        ratio = pair.speedup["baseline"]
        params = sum(p.numel() for p in pipe.transformer.parameters())
        rows.append(
            {
                "technique": name,
                "quality": q,
                **parts,
                "speedup": ratio.median,
                "speedup_ci": [round(ratio.low, 3), round(ratio.high, 3)],
                "latency_ms": pair.median_ms(),
                "params": params,
                "apply_s": round(took, 1),
                "records": [r.metadata.get("removed", r.kind) for r in recipe.records],
            }
        )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| model | variant | blocks | params (M) | params ratio | MACs (G) | MACs ratio |"]
    out.append("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "" if r["variant"] == "none" else f"{r['params_ratio']:.3f}"
        mratio = "" if r["variant"] == "none" else f"{r['macs_ratio']:.3f}"
        out.append(
            f"| {r['model']} | {r['variant']} | {r['blocks']} | {r['params_m']:.1f} | {ratio} | "
            f"{r['macs_g']:.1f} | {mratio} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["sizes", "techniques"], action="append")
    ap.add_argument("--archs", nargs="*", default=list(ARCHS))
    ap.add_argument("--model", default="miniature-dit")
    ap.add_argument("--metric", default="miniature")
    ap.add_argument("--num-prompts", type=int, default=None)
    ap.add_argument("--runs", type=int, default=7, help="paired timing rounds")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--techniques", nargs="*", default=[], help="only those whose name has these")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    parts = args.only or ["sizes", "techniques"]
    from compress._quiet import import_heavy

    import_heavy()
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv)}
    if "sizes" in parts:
        result["sizes"] = sizes(args.archs)
        print("## Transformer parameters and MACs (one call, 1024 px, batch 1)\n")
        print(table(result["sizes"]))
        shares = {
            r["model"]: r["outside_blocks_share"] for r in result["sizes"] if r["variant"] == "none"
        }
        print(
            "\nparameters outside the blocks: "
            + ", ".join(f"{k} {v:.1%}" for k, v in shares.items())
        )
    if "techniques" in parts:
        from compress.commands.evaluate import make_settings
        from compress.evaluate.latency import device_name

        settings = make_settings(metric=args.metric, num_prompts=args.num_prompts, warmup=1)
        with open("/proc/loadavg") as f:
            result["loadavg_before"] = f.read().split()[:3]
        rows = measure(args.model, settings, args.runs, args.train_steps, args.techniques)
        with open("/proc/loadavg") as f:
            result["loadavg_after"] = f.read().split()[:3]
        result |= {"model": args.model, "device": device_name("cpu"), "techniques": rows}
        print(json.dumps(rows, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
