"""Structured channel pruning with torch-pruning's dependency graph (DepGraph, Fang et al. 2023),
magnitude or Taylor importance (Diff-Pruning, Fang et al. 2023).

UNets: every prunable group (convolutions, attention, skip connections). Diffusion transformers:
the feed-forward hidden width and the attention heads' width (or whole heads) inside each block
of PixArt, the feed-forward width of SD3's (its joint attention's two streams meet in a
concatenation along the sequence, which the dependency graph does not split, so those groups
are left whole); the residual stream every block reads and writes keeps its width.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from compress.context import RunContext
from compress.errors import CompressError, MissingExtra, RestoreMismatch
from compress.models.unet import (
    count_params,
    example_inputs,
    forward,
)
from compress.transforms.base import Metadata, Stage, TransformConfig, register_transform
from compress.transforms.prune import _dit
from compress.transforms.prune._channel_groups import (
    check_groups,
    head_dims,
    kept_indices,
    prune_groups,
    sync_attributes,
    traceable,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline, UNet2DConditionModel
    from torch import nn

PROTECTED = ("conv_in", "time_proj", "time_embedding", "add_embedding", "conv_norm_out", "conv_out")
# the layers whose output channels a transformer block may lose: attention query/key/value
# projections (image and SD3's text stream) and the first feed-forward projection
_DIT_ROOTS = re.compile(
    r"^transformer_blocks\.\d+\.(attn\d*\.(to_[qkv]|add_[qkv]_proj)|ff(_context)?\.net\.0\.proj)$"
)


class PruneChannelsConfig(TransformConfig):
    """Fraction of channels removed from every prunable group, optionally per resolution stage.

    `stage_ratios[i]` applies to down_blocks.i and its mirror up block (the mid block takes the
    innermost stage's). GroupNorm groups and attention heads are pruned uniformly so both stay
    valid; skip connections prune together with what they feed. `ignore` lists modules (names or
    `re:` patterns) whose output channels stay, by default the input/output convolutions and
    the time and added-condition embeddings.
    """

    kind: Literal["prune_channels"] = "prune_channels"
    ratio: float = Field(0.25, ge=0.0, lt=1.0)
    stage_ratios: tuple[float, ...] | None = None
    importance: Literal["magnitude", "taylor"] = "magnitude"
    prune_heads: bool = False  # remove whole attention heads instead of dimensions of each head
    calibration_prompts: int = Field(8, ge=1, le=1024)  # Taylor: images the pipeline generates
    calibration_steps: int = Field(10, ge=1, le=200)  # Taylor: sampler steps per image
    ignore: tuple[str, ...] = PROTECTED

    @field_validator("stage_ratios")
    @classmethod
    def _ratios(cls, value: tuple[float, ...] | None) -> tuple[float, ...] | None:
        if value is not None and not all(0.0 <= r < 1.0 for r in value):
            raise ValueError(f"every stage ratio must be in [0, 1), got {list(value)}")
        return value

    @field_validator("ignore")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for v in value:
            if v.startswith("re:"):
                try:
                    re.compile(v[3:])
                except re.error as exc:
                    raise ValueError(f"{v!r} is not a valid regular expression: {exc}") from None
        return value


def _ignored(unet: nn.Module, patterns: tuple[str, ...]) -> list[nn.Module]:
    from torch import nn

    names = dict(unet.named_modules())
    out = []
    if not hasattr(unet, "down_blocks"):  # a transformer: only block-internal widths go
        out = [
            m
            for n, m in names.items()
            if isinstance(m, nn.Linear | nn.Conv2d) and not _DIT_ROOTS.match(n)
        ]
    for pat in patterns:
        hits = (
            [m for n, m in names.items() if n and re.fullmatch(pat[3:], n)]
            if pat.startswith("re:")
            else [names[pat]]
            if pat in names
            else []
        )
        if not hits and pat not in PROTECTED:  # SD1.x has no add_embedding: defaults may miss
            raise CompressError(f"ignore: {pat!r} matches no module of this UNet")
        out += hits
    return out


def _stage_ratios(unet: UNet2DConditionModel, cfg: PruneChannelsConfig) -> dict[nn.Module, float]:
    if cfg.stage_ratios is None:
        return {}
    if not hasattr(unet, "down_blocks"):
        raise CompressError(
            f"prune_channels: stage_ratios name UNet stages; {type(unet).__name__} has "
            "transformer blocks: give one ratio"
        )
    n = len(unet.down_blocks)
    if len(cfg.stage_ratios) != n:
        raise CompressError(
            f"stage_ratios has {len(cfg.stage_ratios)} values but this UNet has {n} stages"
        )
    out: dict[nn.Module, float] = {}
    for i, r in enumerate(cfg.stage_ratios):
        out[unet.down_blocks[i]] = r
        out[unet.up_blocks[n - 1 - i]] = r
    if unet.mid_block is not None:
        out[unet.mid_block] = cfg.stage_ratios[-1]
    return out


def _taylor_grads(pipe: DiffusionPipeline, cfg: PruneChannelsConfig, ctx: RunContext) -> None:
    """Accumulate gradients of the denoising loss on latents the pipeline generates itself."""
    import torch

    from compress.models.denoiser import denoiser
    from compress.train.data import calibration_prompts
    from compress.train.diffusion import encode_prompts, noisy, predict, training_scheduler
    from compress.train.teacher_data import teacher_latents

    prompts = calibration_prompts(pipe, ctx, cfg.calibration_prompts)
    latents = teacher_latents(pipe, prompts, ctx.seed, cfg.calibration_steps)
    cond = encode_prompts(pipe, prompts)
    sched = training_scheduler(pipe)
    gen = torch.Generator().manual_seed(ctx.seed)
    unet = denoiser(pipe)
    unet.zero_grad(set_to_none=True)
    for i in range(0, len(prompts), 8):
        sl = slice(i, i + 8)
        x_t, t, target = noisy(sched, latents[sl].to(unet.device, unet.dtype), gen)
        c = {k: v[sl].to(unet.device, unet.dtype) for k, v in cond.items()}
        pred = predict(unet, x_t, t, c)
        torch.nn.functional.mse_loss(pred.float(), target.float()).backward()


def _build_pruner(unet: UNet2DConditionModel, cfg: PruneChannelsConfig, tp: Any) -> Any:
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention_processor import Attention

    heads: dict[nn.Module, int] = {}
    groups: dict[nn.Module, int] = {}
    for m in unet.modules():
        if isinstance(m, Attention):
            heads.update({m.to_q: m.heads, m.to_k: m.heads, m.to_v: m.heads})
        if isinstance(m, GEGLU):  # its projection is chunked into value and gate halves
            groups[m.proj] = 2
    imp = (
        tp.importance.GroupTaylorImportance()
        if cfg.importance == "taylor"
        else tp.importance.GroupMagnitudeImportance(p=2)
    )
    return tp.pruner.MetaPruner(
        unet,
        _inputs(unet),
        importance=imp,
        pruning_ratio=cfg.ratio,
        pruning_ratio_dict=_stage_ratios(unet, cfg),
        ignored_layers=_ignored(unet, cfg.ignore),
        num_heads=heads,
        out_channel_groups=groups,
        in_channel_groups={},
        prune_num_heads=cfg.prune_heads,
        prune_head_dims=not cfg.prune_heads,
        head_pruning_ratio=cfg.ratio if cfg.prune_heads else 0.0,
        head_pruning_ratio_dict=_stage_ratios(unet, cfg) if cfg.prune_heads else None,
        forward_fn=forward,
    )


def _inputs(net: nn.Module) -> dict[str, Any]:
    return example_inputs(net) if hasattr(net, "down_blocks") else _dit.example_inputs(net)


def _denoiser(pipe: DiffusionPipeline) -> nn.Module:
    """The UNet, or a PixArt or SD3 transformer (Sana's convolutional feed-forward and linear
    attention are not groups torch-pruning's graph follows)."""
    from compress.models.denoiser import denoiser

    net = denoiser(pipe)
    if not hasattr(net, "down_blocks") and type(net).__name__ not in (
        "PixArtTransformer2DModel",
        "SD3Transformer2DModel",
    ):
        raise CompressError(
            f"prune_channels applies to UNets and PixArt or SD3 transformers, not "
            f"{type(net).__name__}; remove whole blocks with prune_blocks instead"
        )
    return net


def _torch_pruning() -> Any:
    try:
        import torch_pruning as tp
    except ImportError:
        raise MissingExtra("torch-pruning") from None
    return tp


def _prune(pipe: DiffusionPipeline, cfg: PruneChannelsConfig, ctx: RunContext) -> Metadata:
    tp = _torch_pruning()
    unet = _denoiser(pipe)
    check_groups(unet, [cfg.ratio, *(cfg.stage_ratios or ())])
    _ignored(unet, cfg.ignore)  # names and stage count are checked before any work
    _stage_ratios(unet, cfg)
    before, dims = count_params(unet), head_dims(unet)
    with traceable(unet):
        if cfg.importance == "taylor":
            _taylor_grads(pipe, cfg, ctx)
        pruner = _build_pruner(unet, cfg, tp)
        prune_groups(pruner.DG, unet, pruner.step(interactive=True))
        unet.zero_grad(set_to_none=True)
    if not pruner.pruning_history() and max(cfg.ratio, *(cfg.stage_ratios or [0])) > 0:
        raise CompressError(
            "prune_channels removed no channel: the ratios are too small for "
            "the groups of this UNet, or every group is protected by `ignore`"
        )
    sync_attributes(unet, dims, cfg.prune_heads)
    groups = [
        {"root": r, "out": bool(o), "kept": kept_indices(pruner.DG, unet, r, o, idx)}
        for r, o, idx in pruner.pruning_history()
    ]
    return {"groups": groups, "params_before": before, "params": count_params(unet)}


def _restore(pipe: DiffusionPipeline, cfg: PruneChannelsConfig, metadata: Metadata) -> None:
    tp = _torch_pruning()
    unet = _denoiser(pipe)
    if count_params(unet) != metadata.get("params_before"):
        raise RestoreMismatch(
            f"prune_channels was recorded on a UNet with "
            f"{metadata.get('params_before')} parameters; this one has "
            f"{count_params(unet)}"
        )
    dims = head_dims(unet)
    with traceable(unet):
        dg = tp.DependencyGraph().build_dependency(unet, _inputs(unet), forward_fn=forward)
    todo = []
    for g in metadata["groups"]:
        mod = unet.get_submodule(g["root"])
        fn = dg.get_pruner_of_module(mod)
        have = fn.get_out_channels(mod) if g["out"] else fn.get_in_channels(mod)
        kept = g["kept"]
        if have != kept["channels"]:
            raise RestoreMismatch(
                f"prune_channels: {g['root']} has {have} channels, the recipe "
                f"recorded {kept['channels']}"
            )
        keep = set(kept["indices"])
        handler = fn.prune_out_channels if g["out"] else fn.prune_in_channels
        todo.append((mod, handler, [i for i in range(have) if i not in keep]))
    # groups are formed one at a time, each after the previous one's pruning (as when recorded)
    with traceable(unet):
        prune_groups(dg, unet, (dg.get_pruning_group(m, h, i) for m, h, i in todo))
    sync_attributes(unet, dims, cfg.prune_heads)
    if count_params(unet) != metadata["params"]:
        raise RestoreMismatch(
            "prune_channels: replaying the recorded channels gives "
            f"{count_params(unet)} parameters, not {metadata['params']}"
        )


@register_transform(PruneChannelsConfig, stage=Stage.structure, native=False, restore=_restore)
def apply_prune_channels(
    pipe: DiffusionPipeline, cfg: PruneChannelsConfig, ctx: RunContext
) -> Metadata:
    """Prune channels by importance on these weights; record the kept indices of every group."""
    return _prune(pipe, cfg, ctx)
