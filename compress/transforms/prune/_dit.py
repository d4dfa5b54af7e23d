"""Diffusion-transformer helpers (PixArt, SD3, Sana) shared by the structure transforms and
distillation: which blocks a preset removes, the smaller standard config with the surviving
blocks' weights renumbered, block importance measured on calibration calls, example inputs."""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from torch import nn

BLOCKS = "transformer_blocks"
_KEY = re.compile(rf"^{BLOCKS}\.(\d+)\.(.*)$")


def num_blocks(net: nn.Module) -> int:
    return len(getattr(net, BLOCKS))


def fixed_last(net: nn.Module) -> bool:
    """SD3's last joint block alone closes the text stream (`context_pre_only`): it stays."""
    return type(net).__name__ == "SD3Transformer2DModel"


def preset_blocks(net: nn.Module, every: int | None, last: int | None) -> list[int]:
    """Blocks a preset removes; the first and the last block always stay.

    every k: blocks k-1, 2k-1, ... (every k-th, counting from 1); last n: the n blocks before the
    final one (ShortGPT found the deep blocks the most redundant, the final one the least).
    """
    n = num_blocks(net)
    out = [i for i in range(1, n - 1) if (i + 1) % every == 0] if every else []
    if last:
        if last > n - 2:
            raise CompressError(
                f"prune_blocks last={last}: this transformer has {n} blocks; the first and the "
                f"last stay, so at most {n - 2} can go"
            )
        out += [i for i in range(n - 1 - last, n - 1) if i not in out]
    return sorted(out)


def check_removal(net: nn.Module, removed: list[int]) -> None:
    n = num_blocks(net)
    bad = [i for i in removed if not 0 <= i < n]
    if bad:
        raise CompressError(f"prune_blocks: {BLOCKS}.{bad[0]} does not exist (blocks 0-{n - 1})")
    if len(set(removed)) >= n:
        raise CompressError("prune_blocks would remove every transformer block; keep at least one")
    if fixed_last(net) and n - 1 in removed:
        raise CompressError(
            f"prune_blocks: {BLOCKS}.{n - 1} is SD3's last joint block, the only one that closes "
            "the text stream (context_pre_only); remove others"
        )


def removable(net: nn.Module) -> list[int]:
    """Blocks that may be removed at all (every one, bar SD3's last)."""
    n = num_blocks(net)
    return list(range(n - 1 if fixed_last(net) else n))


def new_config(net: nn.Module, kept: list[int]) -> dict[str, Any]:
    """The transformer's config with `num_layers` the kept count (and SD3.5's dual-attention
    block indices renumbered)."""
    cfg = {k: v for k, v in net.config.items() if not k.startswith("_")}
    cfg["num_layers"] = len(kept)
    if cfg.get("dual_attention_layers"):
        dual = set(cfg["dual_attention_layers"])
        cfg["dual_attention_layers"] = [j for j, i in enumerate(kept) if i in dual]
    return cfg


def old_key(key: str, kept: list[int]) -> str:
    m = _KEY.match(key)
    return f"{BLOCKS}.{kept[int(m.group(1))]}.{m.group(2)}" if m else key


def remove_blocks(net: nn.Module, removed: list[int]) -> nn.Module:
    """A new transformer of the same class without `removed`, built from a standard config (so
    plain diffusers loads it) and holding the surviving weights under renumbered names."""
    import torch

    check_removal(net, removed)
    kept = [i for i in range(num_blocks(net)) if i not in set(removed)]
    with torch.device("meta"):
        new = type(net).from_config(new_config(net, kept))
    old = net.state_dict()
    state, bad = {}, []
    for key, p in new.state_dict().items():
        ok = old_key(key, kept)
        if ok not in old or old[ok].shape != p.shape:
            bad.append(f"{key} needs {tuple(p.shape)}, {ok} is {tuple(old[ok].shape)}")
        state[key] = old.get(ok)
    if bad:
        raise CompressError(f"prune_blocks: the kept blocks do not fit: {'; '.join(bad[:3])}")
    new.load_state_dict(state, strict=True, assign=True)
    buffers = dict(net.named_buffers())
    for name, buf in list(new.named_buffers()):  # non-persistent ones (positional tables)
        if buf.is_meta:
            owner, _, leaf = name.rpartition(".")
            new.get_submodule(owner).register_buffer(
                leaf, buffers[old_key(name, kept)].clone(), persistent=False
            )
    return new.train(net.training)


def transformer(pipe: Any) -> nn.Module:
    """The pipeline's diffusion transformer, or an error naming what block removal fits."""
    from compress.models.denoiser import denoiser

    net = denoiser(pipe)
    if not hasattr(net, BLOCKS) or hasattr(net, "down_blocks"):
        raise CompressError(
            f"prune_blocks with every, last, importance or transformer_blocks.N applies to "
            f"diffusion transformers (PixArt, SD3, Sana), not {type(net).__name__}; for a UNet "
            "use a preset or UNet block names"
        )
    return net


def prune(pipe: Any, removed: list[int]) -> dict[str, Any]:
    """Replace the pipeline's transformer by one without `removed`; what prune_blocks records."""
    from compress.models.denoiser import denoiser_attr
    from compress.models.unet import FEATURE_PAIRS, count_params

    net = transformer(pipe)
    new = remove_blocks(net, removed)
    kept = [i for i in range(num_blocks(net)) if i not in set(removed)]
    pipe.register_modules(**{denoiser_attr(pipe): new})
    setattr(new, FEATURE_PAIRS, block_pairs(kept))
    return {
        "removed": [f"{BLOCKS}.{i}" for i in sorted(removed)],
        "before": {"num_layers": num_blocks(net), "params": count_params(net)},
        "params": count_params(new),
        "num_layers": len(kept),
    }


def removal(pipe: Any, cfg: Any, ctx: Any) -> tuple[list[int], dict[str, Any]]:
    """Blocks a PruneBlocksConfig removes from this transformer (its presets and names, then
    the `importance` least important of the rest, measured on `calibration` trajectories) and
    what it measured."""
    net = transformer(pipe)
    named = [int(n.split(".")[1]) for n in cfg.remove]
    removed = sorted(set(preset_blocks(net, cfg.every, cfg.last)) | set(named))
    check_removal(net, removed)
    importance = cfg.importance
    if not removed and not importance:  # a shipped preset (dit-fast) on a shallow transformer
        warnings.warn(
            f"prune_blocks every={cfg.every} last={cfg.last} removes no block of this "
            f"{num_blocks(net)}-block transformer (the first and the last stay): it is unchanged; "
            "name blocks with remove or use importance",
            stacklevel=2,
        )
    if not importance:
        return removed, {}
    from compress.transforms.quantize._calibration import calibration_calls

    scores = block_importance(net, calibration_calls(pipe, cfg.calibration, ctx))
    left = sorted((s, i) for i, s in scores.items() if i not in removed)
    if importance > len(left) or len(removed) + importance >= num_blocks(net):
        raise CompressError(
            f"prune_blocks importance={importance}: only {len(left)} more blocks can go and at "
            "least one must stay"
        )
    removed = sorted(removed + [i for _, i in left[:importance]])
    return removed, {
        "importance": {f"{BLOCKS}.{i}": round(s, 6) for i, s in sorted(scores.items())},
        "calibration": {**cfg.calibration.model_dump(), "seed": ctx.seed},
    }


def block_pairs(kept: list[int]) -> list[tuple[str, str]]:
    """Feature-distillation pairs: each kept block with the teacher block it was."""
    return [(f"{BLOCKS}.{j}", f"{BLOCKS}.{i}") for j, i in enumerate(kept)]


def block_importance(net: nn.Module, calls: list[dict[str, Any]]) -> dict[int, float]:
    """Per removable block, the relative squared change of the denoiser's output on `calls` when
    that block alone is skipped (the hidden state passing through unchanged): the blocks whose
    removal changes the output least are the least important (ShortGPT's block influence,
    measured at the output as TinyFusion's objective)."""
    import torch

    blocks = getattr(net, BLOCKS)
    with torch.no_grad():
        ref = [net(**call)[0].float() for call in calls]
        out: dict[int, float] = {}
        try:
            for i in removable(net):
                setattr(net, BLOCKS, torch.nn.ModuleList(b for j, b in enumerate(blocks) if j != i))
                err = [
                    ((net(**call)[0].float() - r) ** 2).sum() / (r**2).sum()
                    for call, r in zip(calls, ref, strict=True)
                ]
                out[i] = float(torch.stack(err).mean())
        finally:
            setattr(net, BLOCKS, blocks)
    return out


def example_inputs(net: nn.Module, batch: int = 1, tokens: int = 8) -> dict[str, torch.Tensor]:
    """Small random inputs that run every module of a PixArt, SD3 or Sana transformer (for MAC
    counts and tracing)."""
    import torch

    cfg = net.config
    gen = torch.Generator().manual_seed(0)
    dev, dtype = net.device, net.dtype

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dev, dtype)

    side = int(cfg.sample_size)
    out: dict[str, Any] = {
        "hidden_states": rand(batch, cfg.in_channels, side, side),
        "timestep": torch.full((batch,), 500.0, device=dev),
    }
    name = type(net).__name__
    if name == "SD3Transformer2DModel":
        out["encoder_hidden_states"] = rand(batch, tokens, cfg.joint_attention_dim)
        out["pooled_projections"] = rand(batch, cfg.pooled_projection_dim)
    else:
        out["encoder_hidden_states"] = rand(batch, tokens, cfg.caption_channels)
    if name == "PixArtTransformer2DModel":
        out["added_cond_kwargs"] = {
            "resolution": torch.full((batch, 2), 8.0 * side, device=dev, dtype=dtype),
            "aspect_ratio": torch.ones(batch, 1, device=dev, dtype=dtype),
        }
    return out
