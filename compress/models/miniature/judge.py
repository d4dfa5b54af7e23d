"""The miniature judge: attribute classifiers and a feature space, trained on real composed digits.

It scores prompt adherence (the probability it gives each attribute a prompt names) and realism
(Frechet distance of its features to held-out real digits, as FID does with Inception features,
Heusel et al. 2017). It is not HPSv2 or any human-preference model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from compress.errors import CompressError
from compress.models.miniature.data import ATTRIBUTES, IMAGE_SIZE, parse_prompt

if TYPE_CHECKING:
    import torch
    from PIL import Image

JUDGE_VERSION = "miniature-judge-3"
JUDGE_FILE = Path(__file__).parent / "judge.safetensors"
FEATURES = 64
# combined = adherence - FD_WEIGHT * realism_fd. 48 real held-out digits sit near FD 43 (the
# small-sample floor) and 1-step samples near 300, so realism spans about 0.5 of the scale,
# as adherence does (about 0.5 to 1): neither part drowns the other.
FD_WEIGHT = 0.002


@dataclass
class JudgeResult:
    """Scores of one image set; `combined` (higher is better) is what a search maximises."""

    adherence: float  # mean over prompts of mean over named attributes of P(requested value)
    realism_fd: float  # Frechet distance to held-out real digits in judge features; lower is better
    combined: float  # adherence - FD_WEIGHT * realism_fd
    per_attribute: dict[str, float] = field(default_factory=dict)
    metric: str = JUDGE_VERSION


def build_net() -> torch.nn.ModuleDict:
    """A small CNN: 32x32 RGB -> 64 features -> one classification head per attribute.

    The trunk's map is summarised twice: a global max (what is drawn, wherever it is) and a 2x2
    average (where things are and which colours fill them).
    """
    from torch import nn

    def block(cin: int, cout: int) -> list[nn.Module]:
        return [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU()]

    conv = nn.Sequential(
        *block(3, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 64),
        *block(64, 64),
    )  # fmt: skip
    pools = nn.ModuleList([nn.AdaptiveMaxPool2d(1), nn.AdaptiveAvgPool2d(2)])
    embed = nn.Sequential(nn.Linear(64 * 5, FEATURES), nn.ReLU())
    heads = nn.ModuleDict({k: nn.Linear(FEATURES, len(v)) for k, v in ATTRIBUTES.items()})
    return nn.ModuleDict({"conv": conv, "pools": pools, "embed": embed, "heads": heads})


def embed(net: torch.nn.ModuleDict, x: torch.Tensor) -> torch.Tensor:
    """(N, 3, 32, 32) in [0, 1] -> (N, 64) judge features."""
    import torch

    h = net["conv"](x - 0.5)  # (N, 64, 8, 8)
    return net["embed"](torch.cat([p(h).flatten(1) for p in net["pools"]], 1))


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """PIL images -> (N, 3, 32, 32) floats in [0, 1], resized if the pipeline drew another size."""
    import torch
    from PIL import Image

    if not images:
        raise CompressError("the miniature judge got no images to score")
    size = (IMAGE_SIZE, IMAGE_SIZE)
    arrs = []
    for im in images:
        if not isinstance(im, Image.Image):
            raise CompressError(f"the miniature judge scores PIL images, got {type(im).__name__}")
        im = im.convert("RGB")
        if im.size != size:
            im = im.resize(size, Image.Resampling.BILINEAR)
        arrs.append(np.asarray(im, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


def frechet_distance(mu1: np.ndarray, s1: np.ndarray, mu2: np.ndarray, s2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2)."""
    from scipy import linalg

    covmean = linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # near-singular product: regularise as FID code does
        eps = np.eye(len(s1)) * 1e-6
        covmean = linalg.sqrtm((s1 + eps) @ (s2 + eps))
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def feature_stats(feats: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return feats.mean(0), np.cov(feats, rowvar=False)


class MiniatureJudge:
    """Loads the shipped judge weights and the real-feature statistics for the Frechet distance."""

    def __init__(self, net: torch.nn.ModuleDict, mu: np.ndarray, sigma: np.ndarray) -> None:
        self.net = net.eval()
        self.mu, self.sigma = mu, sigma

    @classmethod
    def load(cls, path: str | Path | None = None) -> MiniatureJudge:
        from safetensors.torch import load_file

        path = Path(path) if path is not None else JUDGE_FILE
        if not path.is_file():
            raise CompressError(
                f"the miniature judge weights are missing ({path}); "
                "rebuild them with `python scripts/train_miniature.py --stages judge`"
            )
        state = load_file(path)
        mu, sigma = (
            state.pop("stats.mu").double().numpy(),
            state.pop("stats.sigma").double().numpy(),
        )
        net = build_net()
        net.load_state_dict(state)
        return cls(net, mu, sigma)

    def _forward(self, images: list[Image.Image] | torch.Tensor) -> tuple[torch.Tensor, dict]:
        import torch

        x = images if isinstance(images, torch.Tensor) else to_tensor(images)
        with torch.inference_mode():
            f = embed(self.net, x)
            probs = {k: h(f).softmax(-1) for k, h in self.net["heads"].items()}
        return f, probs

    def features(self, images: list[Image.Image] | torch.Tensor) -> np.ndarray:
        """(N, 64) judge features, the space the Frechet distance is measured in."""
        return self._forward(images)[0].double().numpy()

    def predict(self, images: list[Image.Image] | torch.Tensor) -> dict[str, np.ndarray]:
        """Per attribute, (N, classes) probabilities."""
        return {k: v.double().numpy() for k, v in self._forward(images)[1].items()}

    def realism_fd(self, feats: np.ndarray) -> float:
        if len(feats) < 2:
            raise CompressError("the Frechet distance needs at least 2 images")
        return frechet_distance(*feature_stats(feats), self.mu, self.sigma)

    def per_image(
        self, images: list[Image.Image], prompts: list[str]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(N,) adherence of each image to its prompt (NaN where the prompt names nothing) and
        (N, 64) features: the parts a paired bootstrap over images resamples."""
        named = [parse_prompt(p) for p in prompts]
        feats, probs = self._forward(images)
        adherence = [
            np.mean([float(probs[k][i, ATTRIBUTES[k].index(v)]) for k, v in a.items()])
            if a
            else np.nan
            for i, a in enumerate(named)
        ]
        return np.asarray(adherence), feats.double().numpy()

    def score(self, images: list[Image.Image], prompts: list[str]) -> JudgeResult:
        """Adherence to each prompt's named attributes and realism of the whole set."""
        if len(images) != len(prompts):
            raise CompressError(f"got {len(images)} images for {len(prompts)} prompts")
        named = [parse_prompt(p) for p in prompts]
        feats, probs = self._forward(images)
        per_prompt: list[float] = []
        per_attr: dict[str, list[float]] = {k: [] for k in ATTRIBUTES}
        for i, attrs in enumerate(named):
            ps = [float(probs[k][i, ATTRIBUTES[k].index(v)]) for k, v in attrs.items()]
            for (k, _), p in zip(attrs.items(), ps, strict=True):
                per_attr[k].append(p)
            if ps:
                per_prompt.append(float(np.mean(ps)))
        if not per_prompt:
            raise CompressError("no prompt names an attribute, so adherence is undefined")
        adherence = float(np.mean(per_prompt))
        fd = self.realism_fd(feats.double().numpy())
        return JudgeResult(
            adherence=adherence,
            realism_fd=fd,
            combined=adherence - FD_WEIGHT * fd,
            per_attribute={k: float(np.mean(v)) for k, v in per_attr.items() if v},
        )
