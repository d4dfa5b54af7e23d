"""Fidelity: how close a candidate's images stay to the uncompressed pipeline's (PSNR, SSIM).

It is not a preference or quality score: an uncompressed pipeline scores 1 against itself, and a
change that improves images also lowers fidelity. Scalar: mean SSIM over images (Wang et al. 2004),
in [-1, 1], 1 = identical; parts: `ssim` and `psnr_db` (mean PSNR, capped at 100 dB).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from compress.errors import CompressError
from compress.evaluate.prompts import GENERAL_PROMPTS, GENERAL_VERSION, first, load_prompt_file
from compress.evaluate.quality import check_pairs

if TYPE_CHECKING:
    import torch

VERSION = "psnr-ssim-1"
PSNR_CAP_DB = 100.0


def to_array(image: Any) -> np.ndarray:
    """A PIL image or (H, W, 3) array as float64 RGB in [0, 1]."""
    a = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    return a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio for images in [0, 1], capped so identical images stay finite."""
    mse = float(np.mean((a - b) ** 2))
    return PSNR_CAP_DB if mse <= 10 ** (-PSNR_CAP_DB / 10) else 10.0 * np.log10(1.0 / mse)


def _gaussian(size: int, sigma: float) -> torch.Tensor:
    import torch

    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: np.ndarray, b: np.ndarray, window: int = 11, sigma: float = 1.5) -> float:
    """Mean SSIM over pixels and channels with an 11x11 Gaussian window (sigma 1.5, K = 0.01,
    0.03, data range 1), valid region only, as in Wang et al. 2004.

    Written here because no installed dependency offers it (scikit-image and torchmetrics are not
    dependencies, and pulling one in for a dozen lines of convolution is not worth it).
    """
    import torch
    import torch.nn.functional as F

    if a.shape != b.shape:
        raise CompressError(f"image sizes differ: {a.shape} vs {b.shape}")
    window = min(window, a.shape[0], a.shape[1])
    window -= 1 - window % 2  # odd
    g = _gaussian(window, sigma)
    kernel = (g[:, None] * g[None, :]).expand(a.shape[2], 1, window, window)

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, kernel, groups=x.shape[1])

    x = torch.from_numpy(a).permute(2, 0, 1)[None]  # (1, C, H, W)
    y = torch.from_numpy(b).permute(2, 0, 1)[None]
    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * cov + c2)
    den = (mx**2 + my**2 + c1) * (vx + vy + c2)
    return float((num / den).mean())


class FidelityMetric:
    """PSNR and SSIM of each image against the reference image for the same prompt and seed."""

    name = "fidelity"
    higher_is_better = True
    needs_reference = True

    def __init__(self, device: str = "cpu", prompts: str | None = None) -> None:
        # prompts: a prompt file, or the name of another metric whose prompt set to reuse
        # ("miniature" for the miniature model, whose vocabulary is small); default: general set.
        self.device = device
        self._source = prompts

    def _prompt_set(self) -> tuple[list[str], list[int], str]:
        from compress.evaluate.quality import metric_class

        if self._source is None:
            return GENERAL_PROMPTS, list(range(len(GENERAL_PROMPTS))), GENERAL_VERSION
        if self._source in ("miniature", "hpsv2", "pickscore", "clip"):
            other = metric_class(self._source)(device=self.device)
            prompts, seeds = other.prompts(None)
            return prompts, seeds, f"{self._source}-prompts"
        prompts, version = load_prompt_file(self._source)
        return prompts, list(range(len(prompts))), version

    @property
    def version(self) -> str:
        return f"{VERSION}/{self._prompt_set()[2]}"

    def prompts(self, n: int | None = None) -> tuple[list[str], list[int]]:
        prompts, seeds, _ = self._prompt_set()
        return first(prompts, n, "the fidelity prompt set"), seeds[: n or len(seeds)]

    def score(
        self, images: list[Any], prompts: list[str], reference_images: list[Any] | None = None
    ) -> tuple[float, dict[str, float]]:
        check_pairs(images, prompts)
        if reference_images is None:
            raise CompressError(
                "fidelity compares with the uncompressed pipeline: pass reference_images (its "
                "images for the same prompts and seeds: compress.evaluate.reference_images), "
                "or --reference MODEL on the command line"
            )
        if len(reference_images) != len(images):
            raise CompressError(f"got {len(images)} images but {len(reference_images)} references")
        pairs = [(to_array(i), to_array(r)) for i, r in zip(images, reference_images, strict=True)]
        s = float(np.mean([ssim(a, b) for a, b in pairs]))
        p = float(np.mean([psnr(a, b) for a, b in pairs]))
        return s, {"ssim": s, "psnr_db": p}
