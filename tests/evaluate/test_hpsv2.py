"""HPSv2 plumbing: exact preprocessing; the load -> score path with a stand-in CLIP-shaped model.

open_clip needs torchvision, which has no CPU build here, so a small random module with the same
interface (encode_image, encode_text, a tokenizer) stands in for ViT-H-14. These tests check the
code path and the arithmetic, not HPSv2's numbers.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from compress.errors import CompressError, MissingExtra
from compress.evaluate.quality.hpsv2 import MEAN, STD, HPSv2Metric, preprocess

STYLES = ("anime", "concept-art", "paintings", "photo")


def _normalise(a: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(a.astype(np.float32) / 255).permute(2, 0, 1)
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


def test_preprocess_resizes_longest_side_and_zero_pads() -> None:
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (100, 200, 3), dtype=np.uint8))  # H 100, W 200
    x = preprocess(wide)
    assert x.shape == (3, 224, 224)
    inner = np.asarray(wide.resize((224, 112), Image.BICUBIC))
    assert torch.allclose(x[:, 56:168], _normalise(inner), atol=1e-6)
    black = _normalise(np.zeros((1, 1, 3), dtype=np.uint8))
    assert torch.allclose(x[:, :56], black.expand(3, 56, 224))
    assert torch.allclose(x[:, 168:], black.expand(3, 56, 224))
    square = Image.fromarray(rng.integers(0, 256, (512, 512, 3), dtype=np.uint8))
    expected = _normalise(np.asarray(square.resize((224, 224), Image.BICUBIC)))
    assert torch.allclose(preprocess(square), expected, atol=1e-6)


class StandInCLIP(nn.Module):
    """CLIP-shaped: image and text towers into one 16-d space."""

    def __init__(self) -> None:
        super().__init__()
        self.visual = nn.Sequential(
            nn.Conv2d(3, 4, 32, stride=32), nn.Flatten(), nn.Linear(4 * 7 * 7, 16)
        )
        self.token_embedding = nn.Embedding(64, 16)

    def encode_image(self, x: torch.Tensor) -> torch.Tensor:
        return self.visual(x)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.token_embedding(tokens).mean(1)


def tokenize(prompts: list[str]) -> torch.Tensor:
    out = torch.zeros(len(prompts), 77, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids = [sum(map(ord, w)) % 64 for w in p.split()][:77]
        out[i, : len(ids)] = torch.tensor(ids)
    return out


@pytest.fixture
def fake_open_clip(monkeypatch):
    """An `open_clip` module whose create_model returns a freshly initialised stand-in."""
    calls: list[tuple] = []
    mod = types.ModuleType("open_clip")

    def create_model(name, pretrained=None, device="cpu"):
        calls.append((name, pretrained))
        return StandInCLIP()

    mod.create_model = create_model
    mod.get_tokenizer = lambda name: tokenize
    monkeypatch.setitem(sys.modules, "open_clip", mod)
    return calls


@pytest.fixture
def bench_dir(tmp_path: Path) -> Path:
    for style in STYLES:
        prompts = [f"{style} picture number {i}" for i in range(2)]
        (tmp_path / f"{style}.json").write_text(json.dumps(prompts))
    return tmp_path


def test_plumbing_scores_with_checkpoint_weights(fake_open_clip, bench_dir, tmp_path) -> None:
    torch.manual_seed(0)
    trained = StandInCLIP().eval()
    ckpt = tmp_path / "HPS_v2.1_compressed.pt"
    torch.save({"state_dict": trained.state_dict()}, ckpt)
    metric = HPSv2Metric(weights=str(ckpt), prompts=str(bench_dir))
    prompts, seeds = metric.prompts(8)
    assert prompts[:4] == [f"{s} picture number 0" for s in STYLES] and seeds == list(range(8))
    assert metric.version.startswith("hps-v2.1/hpdv2-benchmark-")
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)) for _ in prompts]
    value, parts = metric.score(images, prompts)
    assert fake_open_clip == [("ViT-H-14", None)]
    # The same arithmetic by hand with the checkpoint's weights: 100 x cosine per pair.
    with torch.no_grad():
        fi = trained.encode_image(torch.stack([preprocess(im) for im in images]))
        ft = trained.encode_text(tokenize(prompts))
    per_pair = 100 * torch.nn.functional.cosine_similarity(fi, ft).numpy()
    for k, style in enumerate(STYLES):
        assert parts[style] == pytest.approx(per_pair[[k, k + 4]].mean(), abs=1e-4)
    assert value == pytest.approx(np.mean([parts[s] for s in STYLES]), abs=1e-6)


def test_wrong_checkpoint_is_a_clear_error(fake_open_clip, bench_dir, tmp_path) -> None:
    bad = tmp_path / "HPS_v2_compressed.pt"
    torch.save({"state_dict": {"nope": torch.zeros(1)}}, bad)
    metric = HPSv2Metric(weights=str(bad), prompts=str(bench_dir))
    assert metric.hps_version == "v2.0"
    img = Image.new("RGB", (8, 8))
    with pytest.raises(CompressError, match="not an HPSv2 checkpoint"):
        metric.score([img], ["a cat"])


def test_missing_files_say_what_to_put_where(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("COMPRESS_HPS_CHECKPOINT", raising=False)
    monkeypatch.delenv("COMPRESS_HPS_PROMPTS", raising=False)
    metric = HPSv2Metric()
    with pytest.raises(CompressError, match="HPS_v2.1_compressed.pt.*COMPRESS_HPS_CHECKPOINT"):
        metric.score([Image.new("RGB", (8, 8))], ["a cat"])
    with pytest.raises(CompressError, match="anime.json.*COMPRESS_HPS_PROMPTS"):
        metric.prompts(4)
    (tmp_path / "anime.json").write_text("[]")
    with pytest.raises(CompressError, match="concept-art.json, paintings.json, photo.json"):
        HPSv2Metric(prompts=str(tmp_path)).prompts(4)


def test_missing_open_clip_names_the_extra(tmp_path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import raises ImportError
    ckpt = tmp_path / "HPS_v2.1_compressed.pt"
    ckpt.write_bytes(b"")
    with pytest.raises(MissingExtra, match=r"compress\[hps\]"):
        HPSv2Metric(weights=str(ckpt)).score([Image.new("RGB", (8, 8))], ["a cat"])
