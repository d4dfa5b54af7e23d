"""Size, latency and quality of each quantization format, printed as one markdown table.

    python scripts/bench_quantization.py --model miniature
    python scripts/bench_quantization.py --arch sd15 --device cuda --dtype float16 \
        --formats int8_dynamic,float8_dynamic,int4_weight_only [--compile]

`--arch` builds random weights: latency and size only (no quality). Every format quantizes all
the denoiser's Linear layers except the protected ones (conv_in, conv_out, time embedding).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

BASE = "full precision"


def unet_mb(pipe: Any) -> float:
    """The denoiser's size on disk, as diffusers saves it (safetensors)."""
    with tempfile.TemporaryDirectory() as tmp:
        pipe.unet.save_pretrained(tmp, safe_serialization=True)
        return sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors")) / 2**20


def measure(
    args: argparse.Namespace, fmt: str, settings: Any, reference: Any, base: Any
) -> dict[str, Any]:
    """One format's row; its latency is paired against `base` (full precision) in one process."""
    from compress.context import RunContext
    from compress.evaluate import commands
    from compress.evaluate.latency import device_name
    from compress.evaluate.paired import paired_latency
    from compress.evaluate.quality import get_metric
    from compress.evaluate.run import generate_images
    from compress.transforms.quantize.ptq import NOT_FASTER, QuantizeConfig, apply_quantize

    pipe = base if fmt == BASE else commands.load_for(args.model, args.arch, settings)
    builtin = args.model == "miniature"
    layers, method = 0, "-"
    rules = [{"match": "re:.*", "format": fmt.removesuffix(" qat")}]
    if fmt.endswith(" qat"):
        from compress.transforms.quantize.qat import QATConfig, apply_qat

        metric = get_metric(settings.metric, device=settings.device)
        ctx = RunContext(device=settings.device, prompts=metric.prompts(None)[0])
        cfg = QATConfig(rules=rules, steps=args.qat_steps, samples=args.qat_samples)
        layers, method = len(apply_qat(pipe, cfg, ctx)["modules"]), f"QAT {args.qat_steps} steps"
    elif fmt != BASE:
        from compress.evaluate.prompts import GENERAL_PROMPTS

        # calibration prompts: the miniature's own digits prompts, else general ones (never the
        # metric's prompts, which score the result)
        ctx = RunContext(device=settings.device, prompts=[] if builtin else GENERAL_PROMPTS)
        calibration = {"prompts": args.calib_prompts, "timesteps": args.calib_timesteps}
        cfg = QuantizeConfig(rules=rules, calibration=calibration)
        layers, method = len(apply_quantize(pipe, cfg, ctx)["modules"]), "PTQ"
        if fmt in ("inc_static_int8", "inc_gptq_int4"):
            method += f" ({args.calib_prompts} prompts x {args.calib_timesteps} timesteps)"
    row: dict[str, Any] = {
        "format": fmt.removesuffix(" qat"),
        "method": method,
        "layers": layers,
        "unet_mb": unet_mb(pipe),
    }
    pair = paired_latency(pipe, {BASE: (base, settings)}, settings, rounds=max(2, args.runs))
    ratio = pair.speedup[BASE]
    row |= {
        "latency_ms": pair.median_ms(),
        "spread_ms": pair.spread_ms(),
        "denoiser_ms": sorted(pair.components_ms["candidate"]["denoiser"])[args.runs // 2],
        "speedup": ratio.median,
        "speedup_ci": [round(ratio.low, 3), round(ratio.high, 3)],
    }
    if args.model is not None:
        metric = get_metric(settings.metric, device=settings.device)
        prompts, seeds = metric.prompts(settings.num_prompts)
        images = generate_images(pipe, prompts, seeds, settings)
        value, _ = metric.score(images, prompts, reference_images=reference)
        row |= {"quality": value, "metric": f"{metric.name} {metric.version}"}
    row["device"] = device_name(settings.device)
    if fmt != BASE:  # quantized, but no faster: the paired interval reaches 1 or lies below it
        row["flags"] = [] if ratio.low > 1.0 else [NOT_FASTER]
    return row


def commands_load(args: argparse.Namespace, settings: Any) -> Any:
    from compress.evaluate import commands

    return commands.load_for(args.model, args.arch, settings)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="'miniature' or a pipeline folder (latency, size, quality)")
    src.add_argument("--arch", help="sd15, sd21, sdxl: random weights (latency and size only)")
    p.add_argument("--formats", default="int8_weight_only,int8_dynamic,intx4_weight_only")
    p.add_argument("--metric", default="miniature", help="quality metric (with --model)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--num-prompts", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--qat", default="", help="formats to also train with QAT (comma-separated)")
    p.add_argument("--qat-steps", type=int, default=200)
    p.add_argument("--qat-samples", type=int, default=64)
    p.add_argument("--calib-prompts", type=int, default=4, help="calibrated formats (inc_*)")
    p.add_argument("--calib-timesteps", type=int, default=8)
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    if args.qat and args.arch:
        p.error("--qat trains on the model's own images: use it with --model, not --arch")

    from compress._quiet import import_heavy

    import_heavy()
    from compress.commands.evaluate import make_settings

    settings = make_settings(
        device=args.device,
        dtype=args.dtype,
        steps=args.steps,
        timed_runs=args.runs,
        compile=args.compile,
        metric=args.metric,
        num_prompts=args.num_prompts,
        warmup=1,
    )
    reference = None
    if args.model is not None and args.metric == "fidelity":
        from compress.evaluate import commands
        from compress.evaluate.run import reference_images

        reference = reference_images(commands.load_for(args.model, None, settings), settings)
    rows = []
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    formats += [f.strip() + " qat" for f in args.qat.split(",") if f.strip()]
    base = commands_load(args, settings)
    for fmt in [BASE, *formats]:
        print(f"measuring {fmt} ...", file=sys.stderr, flush=True)
        rows.append(measure(args, fmt, settings, reference, base))
    print("command: python " + " ".join(sys.argv))
    print(f"device: {rows[0]['device']}, settings: {settings.model_dump(exclude_none=True)}\n")
    cols = [
        "format",
        "method",
        "layers",
        "unet_mb",
        "latency_ms",
        "spread_ms",
        "denoiser_ms",
        "speedup",
        "speedup_ci",
        "quality",
        "flags",
    ]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for row in rows:
        cells = [row.get(c) for c in cols]
        print(
            "| "
            + " | ".join(f"{c:.4g}" if isinstance(c, float) else str(c or "") for c in cells)
            + " |"
        )
    if "metric" in rows[0]:
        print(f"\nquality: {rows[0]['metric']}")
    if args.json:
        from compress.fs import write_atomic

        write_atomic(args.json, json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
