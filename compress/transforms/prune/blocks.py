"""Block removal written back as a standard diffusers config with the surviving weights copied
over, so the result loads with plain diffusers.

UNets: BK-SDM (Kim et al. 2023) residual/attention pairs, mid block or innermost stage
(per-block `layers_per_block`, `mid_block_type: null`, per-block transformer depth).
Diffusion transformers (PixArt, SD3, Sana): whole transformer blocks, by preset (every k-th, the
last n) or by measured importance (TinyFusion, Fang et al. 2024; ShortGPT, Men et al. 2024),
written as `num_layers` with the kept blocks renumbered.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from compress.context import RunContext
from compress.errors import CompressError, RestoreMismatch
from compress.models.unet import FEATURE_PAIRS, as_list, count_params
from compress.transforms.base import Metadata, Stage, TransformConfig, register_transform
from compress.transforms.prune import _dit
from compress.transforms.prune._block_plan import (
    layout_of,
    new_config,
    old_key,
    plan,
    preset_names,
    stage_pairs,
)
from compress.transforms.quantize._calibration import Calibration

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from torch import nn

_NAME = re.compile(r"^(mid_block|(down|up)_blocks\.\d+(\.\d+)?|transformer_blocks\.\d+)$")
_BLOCK = re.compile(r"^((down|up)_blocks\.\d+|mid_block)$")
# Set on a block-pruned denoiser: each removal's layout, oldest first (UNet: `plan`'s kept pairs;
# transformer: {"kept": block indices}), to name its modules as the unpruned model did (a LoRA
# trained on that model: compress/lora.py; a ControlNet's residuals: compress/controlnet.py).
REMOVALS = "_compress_block_removals"


class PruneBlocksConfig(TransformConfig):
    """Which blocks to remove.

    UNet names: `down_blocks.I.K` / `up_blocks.J.K` (pair K: resnets.K with attentions.K),
    `mid_block`, and `down_blocks.I` with `up_blocks.0` for the innermost stage. Presets resolve
    on the model: base keeps one pair per down block and the first and last per up block;
    small also removes the mid block; tiny also the innermost stage.

    Transformer names: `transformer_blocks.N`. `every: k` removes every k-th block and `last: n`
    the n blocks before the final one (both keep the first and the last block); `importance: n`
    removes the n blocks whose removal alone changes the output least on calibration calls
    (`calibration`: trajectories of the run's prompts). SD3's last block always stays.
    """

    kind: Literal["prune_blocks"] = "prune_blocks"
    preset: Literal["base", "small", "tiny"] | None = None
    remove: tuple[str, ...] = ()
    # block -> transformer layers each of its attentions keeps (the first ones); for SDXL.
    transformer_depth: dict[str, int] = Field(default_factory=dict)
    every: int | None = Field(None, ge=2, le=1000)
    last: int | None = Field(None, ge=1, le=1000)
    importance: int | None = Field(None, ge=1, le=1000)
    calibration: Calibration = Field(
        default_factory=lambda: Calibration(prompts=4, timesteps=4, steps=8)
    )

    @field_validator("remove")
    @classmethod
    def _names(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [n for n in value if not _NAME.match(n)]
        if bad:
            raise ValueError(
                f"{bad} are not block names; use down_blocks.I.K, up_blocks.J.K, "
                "mid_block, or down_blocks.I with up_blocks.0 for a whole stage (UNets), "
                "transformer_blocks.N (diffusion transformers)"
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
        dit = self.every or self.last or self.importance
        if self.preset is None and not self.remove and not self.transformer_depth and not dit:
            raise ValueError(
                "nothing to prune: give a preset, remove or transformer_depth (UNets), every, "
                "last, importance or remove (transformers)"
            )
        unet = (
            self.preset
            or self.transformer_depth
            or any(not n.startswith("transformer_blocks") for n in self.remove)
        )
        if unet and (dit or any(n.startswith("transformer_blocks") for n in self.remove)):
            raise ValueError(
                "preset, transformer_depth and UNet block names apply to UNets; every, last, "
                "importance and transformer_blocks.N to diffusion transformers: not both"
            )
        return self

    def for_transformers(self) -> bool:
        return bool(
            self.every
            or self.last
            or self.importance
            or any(n.startswith("transformer_blocks") for n in self.remove)
        )


def _prune(pipe: DiffusionPipeline, names: list[str], depth: dict[str, int]) -> Metadata:
    import torch
    from diffusers import UNet2DConditionModel

    from compress.models.denoiser import require_unet

    unet = require_unet(
        pipe, "prune_blocks with UNet block names", "every, last, importance, transformer_blocks.N"
    )
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
    setattr(new, REMOVALS, [*getattr(unet, REMOVALS, []), layout])
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
    from compress.models.denoiser import denoiser

    unet = denoiser(pipe)
    before = metadata.get("before", {})
    if cfg.for_transformers():
        _dit.transformer(pipe)
        have = {"num_layers": _dit.num_blocks(unet), "params": count_params(unet)}
        if before != have:
            raise RestoreMismatch(
                f"prune_blocks was recorded on a transformer with {before}; this one has {have}"
            )
        _dit.prune(pipe, [int(n.split(".")[1]) for n in metadata["removed"]])
        _note_dit(pipe, unet, metadata)
        return
    got = as_list(unet.config.layers_per_block, len(unet.config.down_block_types))
    if before.get("layers_per_block") != got or before.get("params") != count_params(unet):
        raise RestoreMismatch(
            f"prune_blocks was recorded on a UNet with layers_per_block "
            f"{before.get('layers_per_block')} and {before.get('params')} "
            f"parameters; this one has {got} and {count_params(unet)}"
        )
    _prune(pipe, list(metadata["removed"]), dict(metadata["transformer_depth"]))


def _note_dit(pipe: DiffusionPipeline, before: nn.Module, metadata: Metadata) -> None:
    """Note on the pipeline's pruned transformer which blocks of `before` (the transformer the
    removal ran on, or the pruned one itself when loaded) it kept."""
    from compress.models.denoiser import denoiser

    gone = set(metadata["removed"])
    kept = [i for i in range(metadata["before"]["num_layers"]) if f"{_dit.BLOCKS}.{i}" not in gone]
    setattr(denoiser(pipe), REMOVALS, [*getattr(before, REMOVALS, []), {"kept": kept}])


def original_name(net: nn.Module, name: str) -> str:
    """The name module `name` of a block-pruned denoiser had before pruning (`name` if none)."""
    for layout in reversed(getattr(net, REMOVALS, [])):
        key = f"{name}."  # old_key maps weight names; the dot makes a module name one
        key = _dit.old_key(key, layout["kept"]) if "kept" in layout else old_key(key, layout)
        name = key[:-1]
    return name


def _on_load(pipe: DiffusionPipeline, cfg: PruneBlocksConfig, metadata: Metadata) -> None:
    """The folder holds the pruned UNet; note the layout it was pruned to (for LoRAs and
    ControlNets of the unpruned model)."""
    from compress.models.denoiser import denoiser

    unet = denoiser(pipe)
    if cfg.for_transformers():
        _note_dit(pipe, unet, metadata)
        return
    layout = layout_of(list(metadata["removed"]), list(metadata["before"]["layers_per_block"]))
    setattr(unet, REMOVALS, [*getattr(unet, REMOVALS, []), layout])


@register_transform(
    PruneBlocksConfig, stage=Stage.structure, native=True, restore=_restore, on_load=_on_load
)
def apply_prune_blocks(
    pipe: DiffusionPipeline, cfg: PruneBlocksConfig, ctx: RunContext
) -> Metadata:
    """Remove the configured blocks and rebuild the denoiser from a standard config."""
    if cfg.for_transformers():
        from compress.models.denoiser import denoiser

        net = denoiser(pipe)
        removed, extra = _dit.removal(pipe, cfg, ctx)
        metadata = {**_dit.prune(pipe, removed), **extra}
        _note_dit(pipe, net, metadata)
        return metadata
    from compress.models.denoiser import require_unet

    unet = require_unet(
        pipe, "prune_blocks with a preset or UNet block names", "every, last or importance"
    )
    return _prune(pipe, resolve(unet, cfg), dict(cfg.transformer_depth))
