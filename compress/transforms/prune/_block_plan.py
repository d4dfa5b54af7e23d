"""Planning a block removal: check names against a UNet, write the smaller standard config,
and map every surviving weight to its original name (used by prune_blocks)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError
from compress.models.unet import as_list

if TYPE_CHECKING:
    from diffusers import UNet2DConditionModel

_PAIR_KEY = re.compile(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)$")
_BLOCK_KEY = re.compile(r"^(down|up)_blocks\.(\d+)\.(.*)$")
# Config keys holding one value per stage (down order); trimmed when a stage is removed.
_PER_STAGE = (
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "only_cross_attention",
    "transformer_layers_per_block",
)


def preset_names(name: str, layers: list[int]) -> list[str]:
    """BK-SDM's presets as rules over any layout (`layers`: pairs per down block)."""
    n = len(layers)
    out = [f"down_blocks.{i}.{k}" for i in range(n) for k in range(1, layers[i])]
    out += [f"up_blocks.{j}.{k}" for j in range(n) for k in range(1, layers[n - 1 - j])]
    if name in ("small", "tiny"):
        out.append("mid_block")
    if name == "tiny":
        out += [f"down_blocks.{n - 1}", "up_blocks.0"]
    return out


def plan(unet: UNet2DConditionModel, names: list[str], depth: dict[str, int]) -> dict[str, Any]:
    """Check `names` against this UNet and return kept pair indices per block (old indices)."""
    cfg = unet.config
    n = len(cfg.down_block_types)
    layers = as_list(cfg.layers_per_block, n)
    valid = f"this UNet has down_blocks 0-{n - 1} and up_blocks 0-{n - 1}"
    down = [list(range(layers[i])) for i in range(n)]
    up = [list(range(layers[n - 1 - j] + 1)) for j in range(n)]
    drop_stage = drop_mid = False
    for name in names:
        parts = name.split(".")
        if name == "mid_block":
            if unet.mid_block is None:
                raise CompressError("mid_block: this UNet has no mid block to remove")
            drop_mid = True
            continue
        side, b = parts[0], int(parts[1])
        if b >= n:
            raise CompressError(f"{name}: {valid}")
        if len(parts) == 2:
            inner = b == n - 1 if side == "down_blocks" else b == 0
            if not inner or n < 2:
                raise CompressError(
                    f"{name}: only the innermost stage (down_blocks.{n - 1} with "
                    "up_blocks.0) can be removed whole, and not the only one"
                )
            drop_stage = True
            continue
        kept = (down if side == "down_blocks" else up)[b]
        have = layers[b] if side == "down_blocks" else layers[n - 1 - b] + 1
        k = int(parts[2])
        if k not in kept:
            raise CompressError(f"{name}: {side}.{b} has pairs 0-{have - 1}")
        kept.remove(k)
    if drop_stage and not {f"down_blocks.{n - 1}", "up_blocks.0"} <= set(names):
        raise CompressError(f"remove down_blocks.{n - 1} and up_blocks.0 together")
    widths = list(cfg.block_out_channels)
    if drop_stage and widths[-2] != widths[-1]:
        raise CompressError(
            f"removing the innermost stage hands its role to the stage before, which needs the "
            f"same width (block_out_channels {widths}); this fits SD1.x/2.x (1280, 1280), "
            "not this UNet: remove pairs and the mid block instead (preset small)"
        )
    for i in range(n - 1 if drop_stage else n):
        if not down[i]:
            raise CompressError(f"down_blocks.{i} would lose every pair; keep at least one")
        if len(up[n - 1 - i]) != len(down[i]) + 1:
            raise CompressError(
                f"diffusers gives up_blocks.{n - 1 - i} one more pair than its mirror "
                f"down_blocks.{i}: remove as many pairs from each (now {layers[i] - len(down[i])} "
                f"and {layers[i] + 1 - len(up[n - 1 - i])})"
            )
    for block, d in depth.items():
        mod = (
            unet.mid_block
            if block == "mid_block"
            else (unet.get_submodule(block) if int(block.split(".")[1]) < n else None)
        )
        have = [len(a.transformer_blocks) for a in getattr(mod, "attentions", None) or []]
        if not have or d > min(have):
            raise CompressError(
                f"transformer_depth {block}={d}: that block has transformer "
                f"depths {have or 'none (no attention)'}; {valid}"
            )
    return {"down": down, "up": up, "drop_stage": drop_stage, "drop_mid": drop_mid}


def _per_layer(value: Any, count: int) -> list[int]:
    return list(value) if isinstance(value, list | tuple) else [value] * count


def new_config(unet: UNet2DConditionModel, plan: dict[str, Any], depth: dict[str, int]) -> dict:
    """The original config with the removed pairs, stage and mid block taken out."""
    cfg = {k: v for k, v in unet.config.items() if not k.startswith("_")}
    n = len(cfg["down_block_types"])
    layers = as_list(cfg["layers_per_block"], n)
    stages = list(range(n - 1 if plan["drop_stage"] else n))
    ups = [j for j in range(n) if not (plan["drop_stage"] and j == 0)]
    trl, rev = cfg["transformer_layers_per_block"], cfg.get("reverse_transformer_layers_per_block")
    blocks = as_list(trl, n)
    # transformer depth of every kept layer, then the per-block override
    down = [
        [
            depth.get(f"down_blocks.{i}", _per_layer(blocks[i], layers[i])[k])
            for k in plan["down"][i]
        ]
        for i in range(n)
    ]
    up_orig = [
        _per_layer(rev[j] if rev else blocks[n - 1 - j], layers[n - 1 - j] + 1) for j in range(n)
    ]
    up = [[depth.get(f"up_blocks.{j}", up_orig[j][k]) for k in plan["up"][j]] for j in range(n)]
    tl = [down[i][0] if len(set(down[i])) == 1 else down[i] for i in stages]
    mid = unet.mid_block
    if mid is not None and not plan["drop_mid"] and getattr(mid, "attentions", None):
        have = len(mid.attentions[0].transformer_blocks)
        tied = tl[-1] if isinstance(tl[-1], int) else tl[-1][0]
        if depth.get("mid_block", have) != tied:
            raise CompressError(
                f"diffusers ties the mid block's transformer depth to the innermost down "
                f"block's ({tied} here); set transformer_depth mid_block: {tied} to accept "
                f"that (it has {have} now), or remove the mid block"
            )
    for key in _PER_STAGE:
        if isinstance(cfg.get(key), list | tuple):
            cfg[key] = [cfg[key][i] for i in stages]
    if not (isinstance(trl, int) and set(tl) == {trl}):
        cfg["transformer_layers_per_block"] = tl
    if rev or any(up[j] != [tl[n - 1 - j]] * len(up[j]) for j in ups):
        cfg["reverse_transformer_layers_per_block"] = [up[j] for j in ups]
    cfg["down_block_types"] = [cfg["down_block_types"][i] for i in stages]
    cfg["up_block_types"] = [cfg["up_block_types"][j] for j in ups]
    cfg["block_out_channels"] = [cfg["block_out_channels"][i] for i in stages]
    cfg["layers_per_block"] = [len(plan["down"][i]) for i in stages]
    if plan["drop_mid"]:
        cfg["mid_block_type"] = None
    return cfg


def old_key(key: str, plan: dict[str, Any]) -> str:
    shift = 1 if plan["drop_stage"] else 0
    m = _PAIR_KEY.match(key)
    if m:
        side, b, kind, k, rest = m.groups()
        ob = int(b) + (shift if side == "up" else 0)
        ok = plan[side][ob][int(k)]
        return f"{side}_blocks.{ob}.{kind}.{ok}.{rest}"
    m = _BLOCK_KEY.match(key)
    if m and m.group(1) == "up":
        return f"up_blocks.{int(m.group(2)) + shift}.{m.group(3)}"
    return key


def stage_pairs(new: UNet2DConditionModel, plan: dict[str, Any]) -> list[tuple[str, str]]:
    """BK-SDM feature pairs: each student stage with its teacher stage (pre-downsample if the
    student's stage lost its downsampler)."""
    out = []
    for i, block in enumerate(new.down_blocks):
        name = f"down_blocks.{i}"
        if block.downsamplers is None and i < len(plan["down"]) - 1:
            kind = "attentions" if getattr(block, "attentions", None) else "resnets"
            last = len(getattr(block, kind)) - 1
            out.append((f"{name}.{kind}.{last}", f"{name}.{kind}.{plan['down'][i][last]}"))
        else:
            out.append((name, name))
    out += [("mid_block", "mid_block")] if new.mid_block is not None else []
    shift = 1 if plan["drop_stage"] else 0
    return out + [(f"up_blocks.{j}", f"up_blocks.{j + shift}") for j in range(len(new.up_blocks))]


def layout_of(removed: list[str], layers: list[int]) -> dict[str, Any]:
    """The kept pairs `plan` gave when `removed` (checked then) left a UNet that had `layers`
    pairs per down block: rebuilt from a prune_blocks record where the unpruned UNet is gone."""
    n, gone = len(layers), set(removed)
    down = [[k for k in range(layers[i]) if f"down_blocks.{i}.{k}" not in gone] for i in range(n)]
    up = [
        [k for k in range(layers[n - 1 - j] + 1) if f"up_blocks.{j}.{k}" not in gone]
        for j in range(n)
    ]
    drop_stage = f"down_blocks.{n - 1}" in gone
    return {"down": down, "up": up, "drop_stage": drop_stage, "drop_mid": "mid_block" in gone}
