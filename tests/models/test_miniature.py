"""The shipped miniature pipeline and its judge: load, draw, score, reproduce, retrain."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from compress.errors import CompressError
from compress.generate import call_defaults, generate
from compress.models.miniature import data as D
from compress.models.miniature import weights_dir
from compress.models.miniature.judge import MiniatureJudge
from compress.models.miniature.prompts import DEFAULT_CALL, EVAL_PROMPTS, EVAL_SEEDS

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    p = StableDiffusionPipeline.from_pretrained(weights_dir())
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def judge() -> MiniatureJudge:
    return MiniatureJudge.load()


def _pil(x: torch.Tensor) -> list:
    from PIL import Image

    arr = (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    return [Image.fromarray(a) for a in arr]


def test_shipped_pipeline_is_sd_shaped_with_dpm_solver(pipe) -> None:
    from diffusers import DPMSolverMultistepScheduler

    from compress.models.loading import load_pipeline

    assert isinstance(pipe.scheduler, DPMSolverMultistepScheduler)
    assert pipe.scheduler.config.algorithm_type == "dpmsolver++"
    cfg = pipe.unet.config
    assert len(cfg.block_out_channels) >= 2 and cfg.layers_per_block == 2
    assert "CrossAttn" in cfg.mid_block_type and all("CrossAttn" in b for b in cfg.down_block_types)
    loaded = load_pipeline("miniature")
    assert type(loaded).__name__ == "StableDiffusionPipeline"
    assert call_defaults(loaded) == DEFAULT_CALL  # its tuned call, not diffusers' 50 steps
    size = sum(f.stat().st_size for f in weights_dir().rglob("*") if f.is_file())
    assert size < 16e6


def test_judge_is_accurate_on_held_out_real_digits(judge: MiniatureJudge) -> None:
    x, attrs = D.heldout()
    probs = judge.predict(x)
    for i, (k, p) in enumerate(probs.items()):
        assert (p.argmax(1) == attrs[:, i]).mean() >= 0.95, k


def test_judge_scores_real_digits_high_and_noise_low(judge: MiniatureJudge) -> None:
    x, attrs = D.heldout(n_per_glyph=1)
    pick = np.arange(0, 360, 8)  # 45 images, every digit
    real = judge.score(_pil(x[pick]), [D.make_prompt(D.attrs_to_names(a)) for a in attrs[pick]])
    noise = torch.rand((len(pick), 3, 32, 32), generator=torch.Generator().manual_seed(0))
    rand = judge.score(_pil(noise), list(EVAL_PROMPTS[: len(pick)]))
    assert real.adherence > 0.95 and rand.adherence < 0.5
    assert rand.realism_fd > 5 * real.realism_fd
    assert real.combined > rand.combined
    assert set(real.per_attribute) == set(D.ATTRIBUTES)
    # the per-image parts a bootstrap resamples add up to the set's score
    prompts = [*EVAL_PROMPTS[:8], "a handwritten digit"]  # the last names no attribute
    adherence, feats = judge.per_image(_pil(noise[:9]), prompts)
    whole = judge.score(_pil(noise[:9]), prompts)
    assert np.isnan(adherence[-1]) and feats.shape == (9, 64)
    assert np.nanmean(adherence) == pytest.approx(whole.adherence)
    assert judge.realism_fd(feats) == pytest.approx(whole.realism_fd)


def test_generated_images_follow_prompts_and_scores_reproduce(pipe, judge) -> None:
    prompts, seeds = list(EVAL_PROMPTS[:8]), EVAL_SEEDS[:8]
    kw = {"num_inference_steps": 8, "guidance_scale": 4.0}
    a = generate(pipe, prompts, seeds, **kw)
    b = generate(pipe, prompts, seeds, **kw)
    assert a[0].size == (32, 32)
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b, strict=True))
    ra, rb = judge.score(a, prompts), judge.score(b, prompts)
    assert ra == rb
    assert ra.adherence > 0.8  # a trained model: random weights score near chance (about 0.2)


def test_judge_errors_are_clear(judge: MiniatureJudge, tmp_path: Path) -> None:
    with pytest.raises(CompressError, match="missing"):
        MiniatureJudge.load(tmp_path / "nope.safetensors")
    img = _pil(torch.rand(2, 3, 32, 32))
    with pytest.raises(CompressError, match="2 images for 1 prompts"):
        judge.score(img, ["a red seven"])
    with pytest.raises(CompressError, match="vocabulary"):
        judge.score(img, ["a red seven", "a cat"])
    with pytest.raises(CompressError, match="PIL"):
        judge.score([np.zeros((32, 32, 3))], ["a red seven"])


def _training_script():
    script = ROOT / "scripts/train_miniature.py"
    spec = importlib.util.spec_from_file_location("train_miniature", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_colour_curriculum_draws_black_on_white_first() -> None:
    black, white = D.ATTRIBUTES["ink"].index("black"), D.ATTRIBUTES["background"].index("white")
    data = D.batches(np.random.default_rng(0), "train", 64, (2, 2))
    for step in range(4):
        x, attrs = next(data)
        plain = (attrs[:, 1] == black) & (attrs[:, 2] == white)
        if step < 2:  # every image black on white, and drawn so: white corners
            assert plain.all() and torch.all(x[:, :, 0, 0] == 1.0)
        else:  # the whole palette: of 64 random pairs, few are black on white
            assert plain.mean() < 0.25 and x[:, :, 0, 0].std() > 0.2
    assert [D.colour_share(s, 10, 20) for s in (0, 10, 15, 20, 30)] == [0, 0, 0.5, 1, 1]


def test_training_script_is_deterministic(tmp_path: Path, monkeypatch) -> None:
    mod = _training_script()
    det, threads = torch.are_deterministic_algorithms_enabled(), torch.get_num_threads()
    from safetensors.torch import load_file

    outs = []
    try:
        for run in ("a", "b"):
            out = tmp_path / run
            argv = ["x", "--judge-steps", "2", "--vae-steps", "2", "--unet-steps", "2",
                    "--batch", "4", "--vae-batch", "4", "--out", str(out / "pipe"),
                    "--judge-out", str(out / "judge.safetensors")]  # fmt: skip
            monkeypatch.setattr(sys, "argv", argv)
            mod.main()
            files = ["judge.safetensors", "pipe/unet/diffusion_pytorch_model.safetensors",
                     "pipe/vae/diffusion_pytorch_model.safetensors",
                     "pipe/text_encoder/model.safetensors"]  # fmt: skip
            outs.append([load_file(out / f) for f in files])
    finally:
        torch.use_deterministic_algorithms(det)
        torch.set_num_threads(threads)
    for sa, sb in zip(*outs, strict=True):
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
