"""Retrain the built-in DiT miniature (`--model miniature-dit`) from scratch, deterministically.

    python scripts/train_miniature_dit.py

An SD3-shaped pipeline: two small CLIP text encoders and an MMDiT, trained jointly by rectified
flow (Liu et al. 2023; SD3's logit-normal timesteps, Esser et al. 2024) on the UNet miniature's
composed digits, in the latent space of the UNet miniature's trained VAE (reused, not retrained).
The judge (`compress.models.miniature.judge`) never sees a generated image.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # before torch loads OpenMP; not when a test imports this file
    # idle threads spin between the many small ops of these tiny nets (as for the UNet miniature,
    # scripts/train_miniature.py). Set PASSIVE on a busy CPU: spinning threads then fight.
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import numpy as np
import torch
import torch.nn.functional as F

from compress._quiet import import_heavy
from compress.models import miniature
from compress.models.miniature import data as D
from compress.models.miniature_dit import HERE, WEIGHTS
from compress.models.miniature_dit import build as B

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def load_vae(folder: Path):
    """The UNet miniature's VAE; SD3's pipeline adds `shift_factor` back before decoding."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    vae.register_to_config(shift_factor=0.0)  # its latents are centred already
    return vae.eval().requires_grad_(False)


def build_pipeline(vae, args: argparse.Namespace):
    from diffusers import StableDiffusion3Pipeline

    tok = B.build_tokenizer()
    pipe = StableDiffusion3Pipeline(
        transformer=B.build_transformer(args.layers, args.patch_size),
        scheduler=B.build_scheduler(args.shift),
        vae=vae,
        text_encoder=B.build_text_encoder(tok),
        tokenizer=tok,
        text_encoder_2=B.build_text_encoder(tok),
        tokenizer_2=B.build_tokenizer(),
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def train(args: argparse.Namespace, pipe) -> None:
    """Velocity regression: x_s = (1 - s) x0 + s noise, target noise - x0, s ~ logit-normal."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    net, vae = pipe.transformer, pipe.vae
    params = [*pipe.text_encoder.parameters(), *pipe.text_encoder_2.parameters()]
    params += list(net.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2, foreach=True)
    lr_sched = get_cosine_schedule_with_warmup(opt, 100, args.steps)
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=3 / 4, foreach=True)
    rng = np.random.default_rng([args.seed, 3])
    data = D.batches(rng, "train", args.batch, args.colour_ramp)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.steps):
        x, attrs = next(data)
        prompts = D.random_prompts(rng, attrs)
        prompts = ["" if rng.random() < args.uncond else p for p in prompts]  # for CFG
        # the pipeline's own encoding (zero T5 tokens: max_sequence_length=0), so sampling matches
        embeds, _, pooled, _ = pipe.encode_prompt(
            prompts, None, None, do_classifier_free_guidance=False, max_sequence_length=0
        )
        with torch.no_grad():
            z = vae.encode(x * 2 - 1).latent_dist.sample(generator=gen) * vae.config.scaling_factor
        noise = torch.randn(z.shape, generator=gen)
        s = torch.sigmoid(torch.randn(len(z), generator=gen))[:, None, None, None]
        zs = (1 - s) * z + s * noise
        pred = net(zs, embeds, pooled, s.flatten() * 1000).sample  # SD3 takes t = 1000 s
        loss = F.mse_loss(pred, noise - z)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema.step(params)
        if step % 100 == 0:
            log(f"step {step} loss {loss.item():.4f}")
        if args.probe_every and (step + 1) % args.probe_every == 0:
            log(f"step {step + 1} {probe(pipe)}")
    ema.copy_to(params)


def probe(pipe) -> str:
    """A learning-curve diagnostic: the judge's adherence per attribute for the current (not yet
    averaged) weights on the 48 evaluation prompts, sampled in 8 steps at guidance 4."""
    from compress.generate import generate
    from compress.models.miniature.judge import MiniatureJudge
    from compress.models.miniature.prompts import EVAL_PROMPTS, EVAL_SEEDS

    images = generate(pipe, list(EVAL_PROMPTS), EVAL_SEEDS, num_inference_steps=8,
                      guidance_scale=4.0, max_sequence_length=0)  # fmt: skip
    r = MiniatureJudge.load().score(images, list(EVAL_PROMPTS))
    parts = " ".join(f"{k} {v:.3f}" for k, v in r.per_attribute.items())
    return f"probe: adherence {r.adherence:.3f} ({parts}) FD {r.realism_fd:.1f}"


def save_pipeline(out: Path, pipe) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    pipe.save_pretrained(tmp, safe_serialization=True)
    old = out.with_name(f".{out.name}.old")
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=WEIGHTS, help="pipeline folder to write")
    p.add_argument("--vae", type=Path, default=miniature.WEIGHTS, help="pipeline folder whose VAE")
    p.add_argument("--steps", type=int, default=2300)  # 14 min 48 s on 2 CPUs (reports/dit.md)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument(
        "--colour-ramp",
        type=lambda v: tuple(int(s) for s in v.split(",")),
        default=(0, 1200),
        metavar="START,END",
        help="colour curriculum: black on white before START, all colours from END",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--layers", type=int, default=4, help="MMDiT blocks")
    p.add_argument("--patch-size", type=int, default=1)  # 2: colours learnt, digit shapes not
    p.add_argument("--shift", type=float, default=1.0, help="sampling schedule shift (SD3: 3)")
    p.add_argument("--uncond", type=float, default=0.1, help="prompt dropout probability")
    p.add_argument("--probe-every", type=int, default=0, help="judge the weights every N steps")
    p.add_argument("--seed", type=int, default=0)
    # a fixed thread count keeps the run bit-for-bit reproducible; 2 is the budgeted machine
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import_heavy()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    load = os.getloadavg()
    pipe = build_pipeline(load_vae(args.vae), args)
    start = time.time()
    train(args, pipe)
    seconds = {"train": round(time.time() - start, 1)}
    save_pipeline(args.out, pipe)
    seconds["total"] = round(time.time() - T0, 1)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    record = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "seconds": seconds,
        # on a shared machine the wall time depends on the others; CPU time much less so
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "loadavg_1min": {"start": load[0], "end": os.getloadavg()[0]},
    }
    log(f"done: {record}")
    stamp = HERE / "training.json" if args.out == WEIGHTS else args.out.parent / "training.json"
    from compress.fs import write_atomic

    write_atomic(stamp, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
