"""Retrain the built-in miniature pipeline and its judge from scratch, deterministically, on CPU.

    python scripts/train_miniature.py                 # judge, VAE, then text encoder + UNet
    python scripts/train_miniature.py --stages unet   # reuse the saved judge and VAE

The judge sees only real composed digits; the generator never sees the judge.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":  # before torch loads OpenMP; not when a test imports this file
    # idle threads spin between the many small ops of these tiny nets: with 2 threads on 2 cores
    # UNet updates ran 1.7x faster than with threads that sleep. Set PASSIVE on a shared CPU.
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import numpy as np
import torch
import torch.nn.functional as F

from compress._quiet import import_heavy
from compress.models.miniature import HERE, WEIGHTS
from compress.models.miniature import build as B
from compress.models.miniature import data as D
from compress.models.miniature import judge as J
from compress.models.miniature.data import batches

T0 = time.time()


def log(msg: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {msg}", flush=True)


def augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """Soften half the batch, shift by up to 2 px and add slight noise, so the judge tolerates
    imperfect drawings. Softening (down to 12-24 px and back) matters most: without it the judge
    read the size of the VAE's own reconstructions of real digits right only 85% of the time."""
    side = int(rng.integers(12, 25))
    soft = torch.from_numpy(rng.random(len(x)) < 0.5)
    small = F.interpolate(x[soft], size=(side, side), mode="bilinear", antialias=True)
    x = x.clone()
    x[soft] = F.interpolate(small, size=x.shape[-2:], mode="bilinear")
    dx, dy = rng.integers(-2, 3, 2).tolist()
    x = F.pad(x, (2, 2, 2, 2), mode="replicate")[:, :, 2 + dy : 34 + dy, 2 + dx : 34 + dx]
    noise = torch.from_numpy(rng.standard_normal(x.shape).astype(np.float32))
    return (x + 0.03 * noise).clamp(0, 1)


def train_judge(args: argparse.Namespace, rng: np.random.Generator) -> dict:
    from safetensors.torch import save_file

    net = J.build_net()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.judge_steps)
    for step, (x, attrs) in zip(range(args.judge_steps), batches(rng, "train", 128), strict=False):
        f = J.embed(net, augment(x, rng))
        y = torch.from_numpy(attrs)
        loss = sum(F.cross_entropy(h(f), y[:, i]) for i, h in enumerate(net["heads"].values()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            log(f"judge step {step} loss {loss.item():.4f}")
    judge = J.MiniatureJudge(net, np.zeros(J.FEATURES), np.eye(J.FEATURES))  # sets eval mode
    x, attrs = D.heldout()
    probs = judge.predict(x)
    acc = {k: float((p.argmax(1) == attrs[:, i]).mean()) for i, (k, p) in enumerate(probs.items())}
    mu, sigma = J.feature_stats(judge.features(x))
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    state |= {
        "stats.mu": torch.from_numpy(mu).float(),
        "stats.sigma": torch.from_numpy(sigma).float(),
    }
    args.judge_out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.judge_out.with_suffix(".tmp")
    save_file(
        state, tmp, metadata={"version": J.JUDGE_VERSION, "heldout_accuracy": json.dumps(acc)}
    )
    os.replace(tmp, args.judge_out)
    log(f"judge held-out accuracy {acc}")
    return {"heldout_accuracy": acc}


def train_vae(args: argparse.Namespace, rng: np.random.Generator):
    vae = B.build_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, foreach=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=args.vae_steps)
    data = batches(rng, "train", args.vae_batch)
    for step, (x, _) in zip(range(args.vae_steps), data, strict=False):
        post = vae.encode(x * 2 - 1).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = F.mse_loss(rec, x * 2 - 1)
        loss = mse + 1e-6 * post.kl().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0:
            log(f"vae step {step} mse {mse.item():.5f}")
    vae.eval()
    with torch.no_grad():  # scale latents to unit variance, as Stable Diffusion's 0.18215 does
        x, _ = next(batches(np.random.default_rng(0), "train", 1024))
        z = vae.encode(x * 2 - 1).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1 / z.std()))
    log(f"vae scaling factor {vae.config.scaling_factor:.4f}")
    return vae


def train_unet(args: argparse.Namespace, rng: np.random.Generator, vae) -> tuple:
    """Text encoder and UNet jointly, epsilon loss with min-SNR-5 weights (Hang et al. 2023)."""
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel, compute_snr

    tok = B.build_tokenizer()
    text, unet = B.build_text_encoder(tok), B.build_unet()
    noise_sched = DDPMScheduler(**B.SCHEDULE)
    params = [*text.parameters(), *unet.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2, foreach=True)
    lr_sched = get_cosine_schedule_with_warmup(opt, 100, args.unet_steps)
    ema = EMAModel(params, decay=0.999, use_ema_warmup=True, power=3 / 4, foreach=True)
    sf = vae.config.scaling_factor
    data = batches(rng, "train", args.batch, args.colour_ramp)
    gen = torch.Generator().manual_seed(args.seed)
    for step in range(args.unet_steps):
        x, attrs = next(data)
        prompts = D.random_prompts(rng, attrs)
        prompts = ["" if rng.random() < args.uncond else p for p in prompts]  # for CFG
        ids = tok(prompts, padding="max_length", max_length=D.MAX_TOKENS, return_tensors="pt")
        with torch.no_grad():
            z = vae.encode(x * 2 - 1).latent_dist.sample(generator=gen) * sf
        noise = torch.randn(z.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(z),), generator=gen)
        pred = unet(noise_sched.add_noise(z, noise, t), t, text(ids.input_ids)[0]).sample
        snr = compute_snr(noise_sched, t)
        w = snr.clamp(max=5.0) / snr
        loss = (w * F.mse_loss(pred, noise, reduction="none").mean((1, 2, 3))).mean()
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema.step(params)
        if step % 100 == 0:
            log(f"unet step {step} loss {loss.item():.4f}")
    ema.copy_to(params)
    return tok, text, unet


def save_pipeline(out: Path, vae, tok, text, unet) -> None:
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=B.build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
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
    p.add_argument("--stages", default="judge,vae,unet", help="comma list of judge, vae, unet")
    p.add_argument("--out", type=Path, default=WEIGHTS, help="pipeline folder to write")
    p.add_argument("--judge-out", type=Path, default=J.JUDGE_FILE)
    p.add_argument("--judge-steps", type=int, default=800)
    p.add_argument("--vae-steps", type=int, default=800)
    p.add_argument("--unet-steps", type=int, default=4000)
    p.add_argument("--vae-batch", type=int, default=64)
    # the UNet learns digit identity late (after about 2,000 updates): at a fixed budget, more
    # updates of batch 32 beat fewer of batch 64
    p.add_argument("--batch", type=int, default=32, help="UNet batch")
    # with every colour pair from the start, the UNet learnt colours but bound digit words to
    # shapes only weakly (digit 0.27 after 4,000 updates): it must learn each shape in 30 colour
    # pairs. Black on white first binds the shapes (0.89 after 2,000 updates), then all colours.
    p.add_argument(
        "--colour-ramp",
        type=lambda v: tuple(int(s) for s in v.split(",")),
        default=(1000, 1000),
        metavar="START,END",
        help="UNet colour curriculum: black on white before START, all colours from END",
    )
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--uncond", type=float, default=0.1, help="prompt dropout probability")
    p.add_argument("--seed", type=int, default=0)
    # a fixed thread count keeps the run bit-for-bit reproducible; 2 is the budgeted machine
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    stages = set(args.stages.split(","))
    if not stages <= {"judge", "vae", "unet"}:
        p.error(f"--stages takes judge, vae, unet; got {args.stages}")
    import_heavy()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    record: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "seconds": {}}
    for name in ("judge", "vae", "unet"):
        if name not in stages:
            continue
        torch.manual_seed(args.seed)
        rng = np.random.default_rng([args.seed, ("judge", "vae", "unet").index(name)])
        start = time.time()
        if name == "judge":
            record |= train_judge(args, rng)
        elif name == "vae":
            vae = train_vae(args, rng)
            if "unet" not in stages:  # keep the trained UNet, swap in the new VAE
                from diffusers import StableDiffusionPipeline

                old = StableDiffusionPipeline.from_pretrained(args.out)
                save_pipeline(args.out, vae, old.tokenizer, old.text_encoder, old.unet)
        else:
            if "vae" not in stages:
                from diffusers import AutoencoderKL

                vae = AutoencoderKL.from_pretrained(args.out, subfolder="vae")
            save_pipeline(args.out, vae, *train_unet(args, rng, vae))
        record["seconds"][name] = round(time.time() - start, 1)
    record["seconds"]["total"] = round(time.time() - T0, 1)
    log(f"done: {record['seconds']}")
    stamp = HERE / "training.json" if args.out == WEIGHTS else args.out.parent / "training.json"
    from compress.fs import write_atomic

    write_atomic(stamp, json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
