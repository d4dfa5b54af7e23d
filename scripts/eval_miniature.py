"""Measure a miniature pipeline and the judge; print the figures of reports/miniature.md (the
UNet miniature) or of reports/dit.md (`--model miniature-dit`).

Judge accuracy, adherence and realism per step count and guidance, CPU latency:
    python scripts/eval_miniature.py
Also tune the guidance scale at the default step count:
    python scripts/eval_miniature.py --sweep 1,2,4,6
The DiT miniature, with other flow-matching samplers (and shifts) at the default call:
    python scripts/eval_miniature.py --model miniature-dit --schedulers flow-unipc,flow-euler@3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared CPU spinning made steps 10-40x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from compress._quiet import import_heavy
from compress.generate import generate
from compress.models.miniature import data as D
from compress.models.miniature.judge import MiniatureJudge, to_tensor
from compress.models.miniature.prompts import EVAL_PROMPTS, EVAL_SEEDS

STEPS = (20, 8, 4, 2, 1)


def judge_figures(judge: MiniatureJudge, vae) -> list[str]:
    """Accuracy on the held-out real set, and reference scores for real images, for the same
    images after the VAE's round trip (what a perfect UNet could reach) and for noise."""
    x, attrs = D.heldout()
    probs = judge.predict(x)
    hits = np.stack([p.argmax(1) == attrs[:, i] for i, p in enumerate(probs.values())], 1)
    rows = [f"| {k} | {hits[:, i].mean():.4f} |" for i, k in enumerate(probs)]
    rows.append(f"| all four at once | {hits.all(1).mean():.4f} |")
    n = len(EVAL_PROMPTS)
    # real held-out images under the eval prompts' own attributes are not available, so the real
    # reference scores prompts rebuilt from each image's true attributes (all four named)
    pick = np.random.default_rng(7).choice(len(x), n, replace=False)
    real_prompts = [D.make_prompt(D.attrs_to_names(a)) for a in attrs[pick]]
    real = judge.score(_to_pil(x[pick]), real_prompts)
    with torch.no_grad():
        rec = vae.decode(vae.encode(x[pick] * 2 - 1).latent_dist.mean).sample
    vae_rt = judge.score(_to_pil(((rec + 1) / 2).clamp(0, 1)), real_prompts)
    noise = torch.rand(
        (n, 3, D.IMAGE_SIZE, D.IMAGE_SIZE), generator=torch.Generator().manual_seed(0)
    )
    rand = judge.score(_to_pil(noise), list(EVAL_PROMPTS))
    return [
        f"held-out real composed digits: {len(x)} images ({len(x) // 4} validation glyphs x 4)",
        "",
        "| attribute | judge accuracy |",
        "|---|---|",
        *rows,
        "",
        "| reference set (48 images) | adherence | realism FD | combined |",
        "|---|---|---|---|",
        *(
            f"| {name} | {r.adherence:.3f} | {r.realism_fd:.2f} | {r.combined:.3f} |"
            for name, r in (
                ("real held-out digits", real),
                ("the same, through the VAE and back", vae_rt),
                ("uniform noise", rand),
            )
        ),
    ]


def _to_pil(x: torch.Tensor) -> list:
    from PIL import Image

    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def latency(pipe, steps: int, guidance: float, runs: int) -> float:
    """Median seconds for one image (batch 1) after one warm-up call."""
    times = []
    for i in range(runs + 1):
        t = time.perf_counter()
        generate(pipe, EVAL_PROMPTS[:1], [0], num_inference_steps=steps, guidance_scale=guidance)
        if i:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def default_call(model: str, pipe) -> dict:
    """The model's tuned call: the DiT miniature's for it and pipelines derived from it."""
    from compress.models import miniature_dit
    from compress.models.miniature.prompts import DEFAULT_CALL

    dit = model == "miniature-dit" or miniature_dit.trained_call(pipe)
    return dict(miniature_dit.DEFAULT_CALL if dit else DEFAULT_CALL)


def use_scheduler(pipe, spec: str, steps: int, guidance: float) -> None:
    """Swap in a sampler by its compress name, `NAME` or `NAME@SHIFT` (flow matching)."""
    from compress.context import RunContext
    from compress.transforms.runtime.sampler import SamplerConfig, apply_sampler

    name, _, shift = spec.partition("@")
    cfg = SamplerConfig(scheduler=name, steps=steps, guidance_scale=guidance,
                        shift=float(shift) if shift else None)  # fmt: skip
    apply_sampler(pipe, cfg, RunContext())


def setting_row(pipe, judge, name: str, steps: int, guidance: float, runs: int, grid: Path | None):
    images = generate(pipe, EVAL_PROMPTS, EVAL_SEEDS, num_inference_steps=steps,
                      guidance_scale=guidance)  # fmt: skip
    if grid is not None:
        save_grid(images, grid / f"{name.replace(' ', '_')}.png")
    r = judge.score(images, EVAL_PROMPTS)
    pa = r.per_attribute
    lat = latency(pipe, steps, guidance, runs) if runs else float("nan")
    cells = [name, str(steps), f"{guidance:g}", f"{r.adherence:.3f}",
             *(f"{pa.get(k, float('nan')):.3f}" for k in D.ATTRIBUTES),
             f"{r.realism_fd:.2f}", f"{r.combined:.3f}", f"{lat * 1000:.0f}"]  # fmt: skip
    return "| " + " | ".join(cells) + " |", r


def save_grid(images: list, path: Path, cols: int = 12) -> None:
    x = to_tensor(images)
    rows = -(-len(x) // cols)
    x = torch.cat([x, torch.ones(rows * cols - len(x), *x.shape[1:])])
    g = x.reshape(rows, cols, 3, 32, 32).permute(0, 3, 1, 4, 2).reshape(rows * 32, cols * 32, 3)
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((g.numpy() * 255).round().astype(np.uint8)).resize(
        (cols * 64, rows * 64), Image.Resampling.NEAREST
    ).save(path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="miniature", help="'miniature', 'miniature-dit' or a folder")
    p.add_argument("--judge", type=Path, default=None, help="judge weights (default: shipped)")
    p.add_argument("--sweep", default="", help="guidance scales at the default steps, e.g. 1,2,4")
    p.add_argument(
        "--schedulers",
        default="",
        help="samplers to try at the default steps and guidance (each also at 8 and 4 steps): "
        "compress names, NAME@SHIFT for a flow-matching shift, e.g. flow-dpmsolver++,flow-euler@3",
    )
    p.add_argument("--runs", type=int, default=5, help="timed runs per latency figure (0: skip)")
    p.add_argument("--grids", type=Path, default=None, help="folder for image grids per setting")
    p.add_argument("--json", type=Path, default=None, help="also write all scores as JSON here")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import_heavy()
    torch.set_num_threads(args.threads)
    from compress.models.loading import load_pipeline

    pipe = load_pipeline(args.model)
    judge = MiniatureJudge.load(args.judge)
    print("\n".join(judge_figures(judge, pipe.vae)), "\n")
    call = default_call(args.model, pipe)
    g, n = float(call["guidance_scale"]), int(call["num_inference_steps"])
    head = ("| setting | steps | guidance | adherence | " + " | ".join(D.ATTRIBUTES)
            + " | realism FD | combined | CPU ms/image |")  # fmt: skip
    out: dict[str, dict] = {}
    table = [head, "|" + "---|" * 11]
    settings = [("default", n, g), *((f"{s} steps", s, g) for s in STEPS if s < n)]
    settings.append(("guidance off", n, 1.0))
    settings += [(f"guidance {float(s):g}", n, float(s)) for s in args.sweep.split(",") if s]
    own = pipe.scheduler
    runs = [(None, s) for s in settings]
    for spec in filter(None, args.schedulers.split(",")):
        runs += [(spec, (f"{spec}, {s} steps", s, g)) for s in dict.fromkeys((n, 8, 4))]
    for spec, (name, steps, guidance) in runs:
        pipe.scheduler = own
        if spec is not None:
            use_scheduler(pipe, spec, steps, guidance)
        row, r = setting_row(pipe, judge, name, steps, guidance, args.runs, args.grids)
        table.append(row)
        out[name] = {"steps": steps, "guidance": guidance, **r.__dict__}
        print(row, flush=True)
    print("\n" + "\n".join(table))
    if args.json is not None:
        from compress.fs import write_atomic

        write_atomic(args.json, json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
