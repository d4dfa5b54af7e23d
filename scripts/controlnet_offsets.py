"""The ControlNet figures of README's compatibility table: for each transform, how far the
compressed pipeline's ControlNet output lies from the uncompressed one's, as a share of the
control's own effect (both mean |latent difference|), on the test suite's tiny SD pipeline.

    python scripts/controlnet_offsets.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("COMPRESS_COMPILE_BACKEND", "eager")  # the tests' setting
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import torch  # noqa: E402
from test_controlnet import (  # noqa: E402  (the tests' pipelines and measures)
    TRAIN,
    base_pipeline,
    compressed,
    controlnet_for,
    effect,
    latents,
    mean_abs,
    with_controlnet,
)

from compress.models.tiny import build_tiny_pipeline  # noqa: E402
from compress.transforms.distill.recovery import DistillConfig  # noqa: E402
from compress.transforms.quantize.ptq import QuantizeConfig  # noqa: E402
from compress.transforms.quantize.qat import QATConfig  # noqa: E402
from compress.transforms.runtime.cache import CacheConfig  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    net = controlnet_for(build_tiny_pipeline().unet)
    reference, _ = with_controlnet(base_pipeline(), net)
    ref = latents(reference)
    print(f"uncompressed: control effect {effect(reference):.3f}")

    def rules(fmt: str) -> list[dict[str, str]]:
        return [{"match": "re:.*", "format": fmt}]

    cells = {
        "torchao int8_weight_only": QuantizeConfig(rules=rules("int8_weight_only")),
        "torchao int8_dynamic": QuantizeConfig(rules=rules("int8_dynamic")),
        "torchao intx4_weight_only": QuantizeConfig(rules=rules("intx4_weight_only")),
        "neural-compressor inc_rtn_int4": QuantizeConfig(rules=rules("inc_rtn_int4")),
        "qat int8_dynamic": QATConfig(rules=rules("int8_dynamic"), **TRAIN),
        "distill (2 steps)": DistillConfig(**TRAIN),
        "deepcache interval 2": CacheConfig(interval=2, branch=1),
    }
    for name, config in cells.items():
        pipe, _ = compressed(config)
        cpipe, _ = with_controlnet(pipe, net)
        off = mean_abs(latents(cpipe), ref)
        print(f"{name}: off by {off:.3f} = {off / effect(cpipe):.1%} of the control's effect")


if __name__ == "__main__":
    main()
