"""Block removal in the manner of BK-SDM (Kim et al. 2023), written back as a standard diffusers
UNet config (per-block `layers_per_block`, `mid_block_type: null`, per-block transformer depth)
with the surviving weights copied over, so the result loads with plain diffusers."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from compress.context import RunContext
from compress.errors import CompressError, RestoreMismatch
from compress.transforms._block_plan import new_config, old_key, plan, preset_names, stage_pairs
from compress.transforms._unet import FEATURE_PAIRS, as_list, count_params
from compress.transforms.base import Metadata, Stage, TransformConfig, register_transform

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, UNet2DConditionModel

_NAME = re.compile(r"^(mid_block|(down|up)_blocks\.\d+(\.\d+)?)$")
_BLOCK = re.compile(r"^((down|up)_blocks\.\d+|mid_block)$")


class PruneBlocksConfig(TransformConfig):
    """Which residual/attention pairs, mid block or innermost stage to remove.

    Names: `down_blocks.I.K` / `up_blocks.J.K` (pair K: resnets.K with attentions.K),
    `mid_block`, and `down_blocks.I` with `up_blocks.0` for the innermost stage. Presets resolve
    on the model: base keeps one pair per down block and the first and last per up block;
    small also removes the mid block; tiny also the innermost stage.
    """

    kind: Literal["prune_blocks"] = "prune_blocks"
    preset: Literal["base", "small", "tiny"] | None = None
    remove: tuple[str, ...] = ()
    # block -> transformer layers each of its attentions keeps (the first ones); for SDXL.
    transformer_depth: dict[str, int] = Field(default_factory=dict)

    @field_validator("remove")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in value if not _NAME.match(n)]
        if bad:
            raise ValueError(
                f"{bad} are not block names; use down_blocks.I.K, up_blocks.J.K, "
                "mid_block, or down_blocks.I with up_blocks.0 for a whole stage"
            )
        if len(set(value)) != len(value):
            raise ValueError("names appear twice")
        return value

    @field_validator("transformer_depth")
    @classmethod
    def _depths(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [k for k, v in value.items() if not _BLOCK.match(k) or v < 1]
        if bad:
            raise ValueError(
                f"{bad}: keys are down_blocks.I, up_blocks.J or mid_block; values >= 1"
            )
        return value

    @model_validator(mode="after")
    def _something(self) -> PruneBlocksConfig:
        if self.preset is None and not self.remove and not self.transformer_depth:
            raise ValueError("nothing to prune: give a preset, remove or transformer_depth")
        return self


def _prune(pipe: DiffusionPipeline, names: list[str], depth: dict[str, int]) -> Metadata:
    import torch
    from diffusers import UNet2DConditionModel

    unet = pipe.unet
    if getattr(unet, "_compress_channels_pruned", False):
        raise CompressError("prune_blocks must run before prune_channels in a recipe")
    layout = plan(unet, names, depth)
    new_cfg = new_config(unet, layout, depth)
    with torch.device("meta"):
        new = UNet2DConditionModel.from_config(new_cfg)
    old_sd = unet.state_dict()
    state, bad = {}, []
    for key, p in new.state_dict().items():
        ok = old_key(key, layout)
        if ok not in old_sd or old_sd[ok].shape != p.shape:
            got = tuple(old_sd[ok].shape) if ok in old_sd else "missing"
            bad.append(f"{key} needs {tuple(p.shape)} but {ok} is {got}")
        else:
            state[key] = old_sd[ok]
    if bad:
        raise CompressError(
            f"removing {names} leaves layers whose inputs no longer fit (keep the "
            f"first down pair and the first/last up pairs): {'; '.join(bad[:3])}"
        )
    before = {
        "layers_per_block": as_list(unet.config.layers_per_block, len(layout["down"])),
        "mid_block_type": unet.config.mid_block_type,
        "params": count_params(unet),
    }
    new.load_state_dict(state, strict=True, assign=True)
    new.train(unet.training)
    pipe.register_modules(unet=new)
    setattr(new, FEATURE_PAIRS, stage_pairs(new, layout))
    return {
        "removed": sorted(names),
        "transformer_depth": dict(sorted(depth.items())),
        "before": before,
        "params": count_params(new),
        "layers_per_block": list(new.config.layers_per_block),
        "mid_block_type": new.config.mid_block_type,
    }


def resolve(unet: UNet2DConditionModel, cfg: PruneBlocksConfig) -> list[str]:
    """The explicit names a config removes from this UNet (its preset expanded)."""
    n = len(unet.config.down_block_types)
    names = preset_names(cfg.preset, as_list(unet.config.layers_per_block, n)) if cfg.preset else []
    return names + [x for x in cfg.remove if x not in names]


def _restore(pipe: DiffusionPipeline, cfg: PruneBlocksConfig, metadata: Metadata) -> None:
    unet = pipe.unet
    before = metadata.get("before", {})
    got = as_list(unet.config.layers_per_block, len(unet.config.down_block_types))
    if before.get("layers_per_block") != got or before.get("params") != count_params(unet):
        raise RestoreMismatch(
            f"prune_blocks was recorded on a UNet with layers_per_block "
            f"{before.get('layers_per_block')} and {before.get('params')} "
            f"parameters; this one has {got} and {count_params(unet)}"
        )
    _prune(pipe, list(metadata["removed"]), dict(metadata["transformer_depth"]))


@register_transform(PruneBlocksConfig, stage=Stage.structure, native=True, restore=_restore)
def apply_prune_blocks(
    pipe: DiffusionPipeline, cfg: PruneBlocksConfig, ctx: RunContext
) -> Metadata:
    """Remove the configured blocks and rebuild the UNet from a standard config."""
    return _prune(pipe, resolve(pipe.unet, cfg), dict(cfg.transformer_depth))
