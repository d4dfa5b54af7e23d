"""The architecture fingerprint: what a recipe may be applied to."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# Denoiser config keys that decide whether a recipe's module names and shapes still fit: a UNet's
# block layout, or a diffusion transformer's depth, widths and conditioning (PixArt, SD3, Sana).
_KEYS = (
    "in_channels",
    "out_channels",
    "sample_size",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "transformer_layers_per_block",
    "attention_head_dim",
    "num_attention_heads",
    "cross_attention_dim",
    "time_cond_proj_dim",
    "addition_embed_type",
    "num_layers",
    "patch_size",
    "caption_channels",
    "joint_attention_dim",
    "pooled_projection_dim",
    "caption_projection_dim",
    "num_cross_attention_heads",
    "cross_attention_head_dim",
    "dual_attention_layers",
    "qk_norm",
)


class Fingerprint(BaseModel):
    """Class, block layout, widths and attention dims of a denoiser, plus the prediction type.

    UNet fields stay None for a transformer and transformer fields for a UNet; recipes written
    before transformers were supported hold the UNet fields only and still load.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    denoiser: str
    in_channels: int
    out_channels: int | None = None
    sample_size: int | list[int] | None = None
    down_block_types: list[str] | None = None
    mid_block_type: str | None = None
    up_block_types: list[str] | None = None
    block_out_channels: list[int] | None = None
    layers_per_block: int | list[int] | None = None
    transformer_layers_per_block: int | list[int] | list[list[int]] | None = None
    attention_head_dim: int | list[int] | None = None
    num_attention_heads: int | list[int] | None = None
    cross_attention_dim: int | list[int] | None = None
    time_cond_proj_dim: int | None = None
    addition_embed_type: str | None = None
    num_layers: int | None = None
    patch_size: int | None = None
    caption_channels: int | None = None
    joint_attention_dim: int | None = None
    pooled_projection_dim: int | None = None
    caption_projection_dim: int | None = None
    num_cross_attention_heads: int | None = None
    cross_attention_head_dim: int | None = None
    dual_attention_layers: list[int] | None = None
    qk_norm: str | None = None
    prediction_type: str

    def differences(self, other: Fingerprint) -> list[str]:
        """One line per differing field: `field: this=..., other=...`."""
        a, b = self.model_dump(), other.model_dump()
        return [f"{k}: recipe={a[k]!r}, model={b[k]!r}" for k in a if a[k] != b[k]]

    def describe(self) -> str:
        """One line: the class and its layout (UNet widths or transformer depth)."""
        if self.block_out_channels is not None:
            return f"{self.denoiser} {self.block_out_channels}"
        return f"{self.denoiser} ({self.num_layers} blocks)"


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def fingerprint(pipe: Any) -> Fingerprint:
    """Fingerprint of a pipeline's denoiser (`pipe.unet` or `pipe.transformer`) and scheduler."""
    from compress.models.denoiser import denoiser, prediction_type

    net = denoiser(pipe)
    cfg = net.config
    fields = {k: _plain(cfg.get(k)) for k in _KEYS}
    if fields["out_channels"] is None:  # transformers default it to in_channels
        fields["out_channels"] = fields["in_channels"]
    if "dual_attention_layers" in cfg and not fields["dual_attention_layers"]:
        fields["dual_attention_layers"] = None  # SD3.0: none; SD3.5 lists its dual blocks
    return Fingerprint(denoiser=type(net).__name__, prediction_type=prediction_type(pipe), **fields)
