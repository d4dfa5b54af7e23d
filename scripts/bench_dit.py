"""Diffusion-transformer figures: transformer parameters and MACs of block removal on the
full-size architectures (published configs, meta weights: no memory, no checkpoint).

    python scripts/bench_dit.py --only sizes --json reports/dit-sizes.json
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
    from compress.transforms._dit import example_inputs

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
    from compress.transforms._dit import preset_blocks, remove_blocks

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
            rows.append(
                {
                    "model": arch,
                    "variant": name,
                    "blocks": int(net.config.num_layers),
                    "params_m": p / 1e6,
                    "params_ratio": p / p0,
                    "macs_g": m / 1e9,
                    "macs_ratio": m / m0,
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
    ap.add_argument("--only", choices=["sizes"], action="append")
    ap.add_argument("--archs", nargs="*", default=list(ARCHS))
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    from compress._quiet import import_heavy

    import_heavy()
    result: dict[str, Any] = {"command": "python " + " ".join(sys.argv)}
    result["sizes"] = sizes(args.archs)
    print("## Transformer parameters and MACs (one call, 1024 px, batch 1)\n")
    print(table(result["sizes"]))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
