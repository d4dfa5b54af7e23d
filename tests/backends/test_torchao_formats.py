"""Every torchao format's config survives diffusers' serialized form (what a saved folder holds)."""

from __future__ import annotations

import pytest

from compress.transforms.quantize.backends import FORMATS
from compress.transforms.quantize.backends.torchao import ao_config

TORCHAO = sorted(f for f, spec in FORMATS.items() if spec.backend == "torchao")


@pytest.mark.parametrize("fmt", TORCHAO)
def test_config_round_trips_through_diffusers_json(fmt: str) -> None:
    import json

    from diffusers import TorchAoConfig
    from torchao.quantization import FqnToConfig

    cfg = TorchAoConfig(FqnToConfig({"mid_block.attentions.0.proj_out": ao_config(fmt)}))
    data = json.loads(json.dumps(cfg.to_dict()))
    back = TorchAoConfig.from_dict(data)
    assert back.quant_type.fqn_to_config == cfg.quant_type.fqn_to_config
