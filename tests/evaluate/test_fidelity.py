"""Fidelity: PSNR and SSIM against closed forms, and the metric's contract."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from compress.errors import CompressError
from compress.evaluate.quality import get_metric
from compress.evaluate.quality.fidelity import PSNR_CAP_DB, psnr, ssim, to_array


def test_psnr_closed_form() -> None:
    a = np.full((8, 8, 3), 0.5)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)  # MSE 0.01 -> 20 dB
    assert psnr(a, a) == PSNR_CAP_DB


def test_ssim_of_constant_images_is_the_luminance_term() -> None:
    # Flat images have no variance, so SSIM = (2ab + C1) / (a^2 + b^2 + C1).
    a, b, c1 = 0.3, 0.6, 0.01**2
    got = ssim(np.full((16, 16, 3), a), np.full((16, 16, 3), b))
    assert got == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1))


def test_ssim_orders_noise_levels_and_is_symmetric() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((32, 32, 3))
    assert ssim(x, x) == pytest.approx(1.0)
    small = np.clip(x + rng.normal(0, 0.05, x.shape), 0, 1)
    large = np.clip(x + rng.normal(0, 0.3, x.shape), 0, 1)
    assert 1.0 > ssim(x, small) > ssim(x, large)
    assert ssim(x, small) == pytest.approx(ssim(small, x))
    assert ssim(x, 1 - x) < 0  # anti-correlated structure
    with pytest.raises(CompressError, match="sizes differ"):
        ssim(x, x[:16])


def test_metric_scores_images_against_references() -> None:
    metric = get_metric("fidelity")
    prompts, seeds = metric.prompts(3)
    assert len(prompts) == 3 and seeds == [0, 1, 2]
    rng = np.random.default_rng(1)
    refs = [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in prompts]
    value, parts = metric.score(refs, prompts, reference_images=refs)
    assert value == pytest.approx(1.0) and parts["psnr_db"] == PSNR_CAP_DB
    noisy = [
        Image.fromarray(np.clip(to_array(r) * 255 + 40, 0, 255).astype(np.uint8)) for r in refs
    ]
    value, parts = metric.score(noisy, prompts, reference_images=refs)
    assert value < 1.0 and parts["ssim"] == value and parts["psnr_db"] < 20
    with pytest.raises(CompressError, match="reference"):
        metric.score(refs, prompts)
    with pytest.raises(CompressError, match="2 references"):
        metric.score(refs, prompts, reference_images=refs[:2])


def test_prompt_sources(tmp_path) -> None:
    f = tmp_path / "mine.txt"
    f.write_text("a cat\n\na dog\n")
    metric = get_metric("fidelity", prompts=str(f))
    assert metric.prompts(None)[0] == ["a cat", "a dog"]
    assert metric.version.startswith("psnr-ssim-1/mine-")
    with pytest.raises(CompressError, match="has 2 prompts"):
        metric.prompts(5)
    with pytest.raises(CompressError, match="takes no option weights"):
        get_metric("fidelity", weights="x")
    with pytest.raises(CompressError, match="does not exist"):
        get_metric("fidelity", prompts=str(tmp_path / "none.txt")).prompts(1)
