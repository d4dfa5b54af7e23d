"""Is a resumed training run the run it interrupted? Trains the miniature's 4-step trajectory
LoRA student for N updates straight, and again as H updates, a checkpoint, then N (resumed), and
prints the losses after H of both and the largest weight difference (0 if resumption is exact).

    python scripts/check_resume.py --steps 8 --resume-at 4 --samples 1437
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--resume-at", type=int, default=4)
    p.add_argument("--samples", type=int, default=1437, help="training samples (batch 16)")
    args = p.parse_args()
    import torch

    from compress.apply import apply_recipe
    from compress.artifact import load_model
    from compress.context import RunContext
    from compress.recipe import Recipe
    from compress.transforms.distill.steps import DistillStepsConfig

    torch.set_num_threads(2)
    base = load_model("miniature")

    def run(steps: int, work: Path):  # noqa: ANN202
        pipe = copy.deepcopy(base)
        ctx = RunContext(teacher=base, out_dir=work)
        cfg = DistillStepsConfig(method="trajectory", student_steps=4, lora_rank=16, lr=1e-3,
                                 steps=steps, batch_size=16, data="miniature-digits",
                                 samples=args.samples, guidance_scale=4.0)  # fmt: skip
        apply_recipe(pipe, Recipe(name="check", transforms=[cfg]), ctx)
        return pipe, ctx.cache["distill_steps"]

    t0 = time.perf_counter()
    straight, a = run(args.steps, Path(tempfile.mkdtemp()))
    work = Path(tempfile.mkdtemp())
    run(args.resume_at, work)
    resumed, b = run(args.steps, work)
    h = args.resume_at
    print(f"resumed from {b.resumed_from}; losses after it, straight {a.losses[h : h + 3]}, "
          f"resumed {b.losses[h : h + 3]}")  # fmt: skip
    pairs = zip(straight.unet.parameters(), resumed.unet.parameters(), strict=True)
    diff = max((x - y).abs().max().item() for x, y in pairs)
    seconds = time.perf_counter() - t0
    print(f"max |straight - resumed| weight difference: {diff:.3g} ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
