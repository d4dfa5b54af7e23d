"""PickScore and CLIPScore through transformers' CLIPModel, loaded from a tiny saved folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.errors import CompressError
from compress.evaluate.quality import get_metric
from compress.evaluate.quality.clip import CLIPScoreMetric, PickScoreMetric
from compress.models.tokenizer import build_word_tokenizer

WORDS = "a photo of red fox cat dog in snow".split()


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random CLIPModel (text and vision towers of width 32) and its processor, saved."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    torch.manual_seed(0)
    tok = build_word_tokenizer(WORDS)
    small = {
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
    }
    text = CLIPTextConfig(
        **small,
        vocab_size=len(tok),
        max_position_embeddings=16,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    vision = CLIPVisionConfig(**small, image_size=32, patch_size=8)
    model = CLIPModel(
        CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16)
    )
    proc = CLIPProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
        ),
        tokenizer=tok,
    )
    path = tmp_path_factory.mktemp("clip") / "model"
    model.save_pretrained(path)
    proc.save_pretrained(path)
    return path


def _images(n: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)) for _ in range(n)]


def _by_hand(path: Path, images: list, prompts: list[str]) -> tuple[np.ndarray, float]:
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)
    inputs = proc(
        text=prompts,
        images=images,
        return_tensors="pt",
        padding=True,
        truncation=True,
        max_length=16,
    )
    with torch.no_grad():
        out = model(**inputs)
    i = out.image_embeds / out.image_embeds.norm(dim=-1, keepdim=True)
    t = out.text_embeds / out.text_embeds.norm(dim=-1, keepdim=True)
    return (i * t).sum(-1).numpy(), float(model.logit_scale.detach().exp())


def test_pickscore_is_logit_scale_times_cosine(clip_dir: Path) -> None:
    metric = get_metric("pickscore", weights=str(clip_dir))
    assert isinstance(metric, PickScoreMetric) and metric.processor_source == str(clip_dir)
    prompts, seeds = metric.prompts(3)
    images = _images(3)
    value, parts = metric.score(images, prompts)
    cos, scale = _by_hand(clip_dir, images, prompts)
    assert value == pytest.approx(float(np.mean(scale * cos)), abs=1e-4)
    assert parts["std"] == pytest.approx(float(np.std(scale * cos)), abs=1e-4)
    assert metric.version == "pickscore-1/model/general-1" and seeds == [0, 1, 2]


def test_clipscore_is_100_times_clipped_cosine(clip_dir: Path, tmp_path: Path) -> None:
    prompts_file = tmp_path / "p.txt"
    prompts_file.write_text("a photo of a red fox\na cat in snow\n")
    metric = CLIPScoreMetric(weights=str(clip_dir), prompts=str(prompts_file))
    prompts, _ = metric.prompts(None)
    images = _images(2)
    value, _ = metric.score(images, prompts)
    cos, _ = _by_hand(clip_dir, images, prompts)
    assert value == pytest.approx(float(np.mean(100 * np.maximum(cos, 0))), abs=1e-3)
    assert 0.0 <= value <= 100.0


def test_unloadable_model_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    metric = CLIPScoreMetric(weights=str(tmp_path / "empty"))
    with pytest.raises(CompressError, match="could not load the CLIP model.*--weights"):
        metric.score(_images(1), ["a cat"])
