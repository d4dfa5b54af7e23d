"""Human Preference Score v2 / v2.1 (Wu et al. 2023) from local files, without the hpsv2 package.

Model: open_clip ViT-H-14 with the HPS checkpoint's weights (`HPS_v2_compressed.pt` or
`HPS_v2.1_compressed.pt`: the whole fine-tuned CLIP, so no separate backbone file is needed).
Preprocessing as HPSv2's validation transform: longest side to 224 (bicubic), zero-pad to a centred
square, OpenAI CLIP mean/std. Score: 100 x cosine of the normalised image and text features.
Prompts: the benchmark's four styles; parts are per-style means, the scalar is their average.
Files: COMPRESS_HPS_CHECKPOINT (or `weights=`), COMPRESS_HPS_PROMPTS folder (or `prompts=`),
COMPRESS_HPS_VERSION to override the version read from the checkpoint's file name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from compress.errors import CompressError, MissingExtra
from compress.evaluate.prompts import first, hps_benchmark
from compress.evaluate.quality import check_pairs

if TYPE_CHECKING:
    import torch

SIZE = 224
MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP
STD = (0.26862954, 0.26130258, 0.27577711)
ARCH = "ViT-H-14"
HPS_URL = "https://huggingface.co/xswu/HPSv2"


def preprocess(image: Any) -> torch.Tensor:
    """(3, 224, 224): HPSv2's ResizeMaxSize(224, bicubic, fill 0) -> RGB -> ToTensor -> Normalize.

    HPSv2 skips resize and pad when the longest side is already 224; for the square images it is
    given that is the same, and a non-square image is padded here rather than rejected by the ViT.
    """
    import torch
    from PIL import Image

    width, height = image.size
    scale = SIZE / float(max(height, width))
    if scale != 1.0:
        new_h, new_w = (round(d * scale) for d in (height, width))
        image = image.resize((new_w, new_h), Image.BICUBIC)
    width, height = image.size
    pad_w, pad_h = SIZE - width, SIZE - height
    x = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    x = x.permute(2, 0, 1)  # (3, H, W)
    out = torch.zeros(3, SIZE, SIZE)
    out[:, pad_h // 2 : pad_h // 2 + height, pad_w // 2 : pad_w // 2 + width] = x
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return (out - mean) / std


def hps_scores(
    model: Any,
    tokenizer: Any,
    images: list[Any],
    prompts: list[str],
    device: str = "cpu",
    batch: int = 16,
) -> list[float]:
    """100 x cosine(image features, text features) per (image, prompt) pair."""
    import torch
    import torch.nn.functional as F

    scores: list[float] = []
    amp = torch.autocast("cuda", dtype=torch.float16, enabled=torch.device(device).type == "cuda")
    for i in range(0, len(images), batch):
        x = torch.stack([preprocess(im) for im in images[i : i + batch]]).to(device)
        t = tokenizer(prompts[i : i + batch]).to(device)
        with torch.inference_mode(), amp:
            fi = F.normalize(model.encode_image(x).float(), dim=-1)
            ft = F.normalize(model.encode_text(t).float(), dim=-1)
        scores += (100.0 * (fi * ft).sum(-1)).cpu().tolist()
    return scores


def load_hps_model(checkpoint: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """open_clip ViT-H-14 with the HPS state dict (loaded as tensors only, never unpickled code)."""
    import torch

    try:
        import open_clip
    except ImportError as exc:  # open_clip itself, or torchvision which it imports
        raise MissingExtra("open-clip-torch (and torchvision)", "hps") from exc
    path = Path(checkpoint)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    backbone = os.environ.get("COMPRESS_OPENCLIP_CHECKPOINT")  # optional: HPS overwrites it all
    model = open_clip.create_model(ARCH, pretrained=backbone, device="cpu")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CompressError(
            f"{path} is not an HPSv2 checkpoint for open_clip {ARCH}: {exc}"
        ) from exc
    return model.to(device).eval(), open_clip.get_tokenizer(ARCH)


class HPSv2Metric:
    """HPSv2 on the HPDv2 benchmark prompts (styles interleaved, seeds 0..N-1)."""

    name = "hpsv2"
    higher_is_better = True

    def __init__(
        self, device: str = "cpu", weights: str | None = None, prompts: str | None = None
    ) -> None:
        self.device = device
        self.checkpoint = weights or os.environ.get("COMPRESS_HPS_CHECKPOINT")
        self.prompt_dir = prompts or os.environ.get("COMPRESS_HPS_PROMPTS")
        self._model: tuple[Any, Any] | None = None
        self._bench: tuple[list[str], list[str], str] | None = None

    def _checkpoint(self) -> Path:
        path = Path(self.checkpoint).expanduser() if self.checkpoint else None
        if path is None or not path.is_file():
            where = f"{path} does not exist" if path else "no checkpoint given"
            raise CompressError(
                f"HPSv2 needs its checkpoint ({where}): download HPS_v2.1_compressed.pt (or "
                f"HPS_v2_compressed.pt) from {HPS_URL} and pass --weights FILE or set "
                "COMPRESS_HPS_CHECKPOINT=FILE"
            )
        return path

    def _benchmark(self) -> tuple[list[str], list[str], str]:
        if self._bench is None:
            if not self.prompt_dir:
                raise CompressError(
                    "HPSv2 needs the benchmark prompts: put anime.json, concept-art.json, "
                    "paintings.json and photo.json (HPDv2 dataset, benchmark/ folder) in a folder "
                    "and pass --prompts DIR or set COMPRESS_HPS_PROMPTS=DIR"
                )
            self._bench = hps_benchmark(self.prompt_dir)
        return self._bench

    @property
    def hps_version(self) -> str:
        override = os.environ.get("COMPRESS_HPS_VERSION")
        return override or ("v2.1" if "2.1" in self._checkpoint().name else "v2.0")

    @property
    def version(self) -> str:
        return f"hps-{self.hps_version}/{self._benchmark()[2]}"

    def prompts(self, n: int | None = None) -> tuple[list[str], list[int]]:
        prompts = first(self._benchmark()[0], n, "the HPSv2 benchmark")
        return prompts, list(range(len(prompts)))

    def score(
        self, images: list[Any], prompts: list[str], reference_images: list[Any] | None = None
    ) -> tuple[float, dict[str, float]]:
        check_pairs(images, prompts)
        if self._model is None:
            self._model = load_hps_model(self._checkpoint(), self.device)
        scores = hps_scores(*self._model, images, prompts, device=self.device)
        style_of: dict[str, str] = {}
        if self.prompt_dir:  # prompts outside the benchmark are pooled as "other"
            bench_prompts, bench_styles, _ = self._benchmark()
            style_of = dict(zip(reversed(bench_prompts), reversed(bench_styles), strict=True))
        by_style: dict[str, list[float]] = {}
        for prompt, s in zip(prompts, scores, strict=True):
            by_style.setdefault(style_of.get(prompt, "other"), []).append(s)
        parts = {style: float(np.mean(v)) for style, v in by_style.items()}
        return float(np.mean(list(parts.values()))), parts
