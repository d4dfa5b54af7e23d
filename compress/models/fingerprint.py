"""The architecture fingerprint: what a recipe may be applied to."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

# Denoiser config keys that decide whether a recipe's module names and shapes still fit.
_UNET_KEYS = (
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
)


class Fingerprint(BaseModel):
    """Class, block layout, widths and attention dims of a denoiser, plus the prediction type."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    denoiser: str
    in_channels: int
    out_channels: int
    sample_size: int | list[int] | None = None
    down_block_types: list[str]
    mid_block_type: str | None = None
    up_block_types: list[str]
    block_out_channels: list[int]
    layers_per_block: int | list[int]
    transformer_layers_per_block: int | list[int] | list[list[int]]
    attention_head_dim: int | list[int] | None = None
    num_attention_heads: int | list[int] | None = None
    cross_attention_dim: int | list[int] | None = None
    time_cond_proj_dim: int | None = None
    addition_embed_type: str | None = None
    prediction_type: str

    def differences(self, other: Fingerprint) -> list[str]:
        """One line per differing field: `field: this=..., other=...`."""
        a, b = self.model_dump(), other.model_dump()
        return [f"{k}: recipe={a[k]!r}, model={b[k]!r}" for k in a if a[k] != b[k]]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def fingerprint(pipe: Any) -> Fingerprint:
    """Fingerprint of a pipeline's denoiser (`pipe.unet`) and scheduler."""
    unet = getattr(pipe, "unet", None)
    if unet is None:
        raise TypeError(f"{type(pipe).__name__} has no UNet denoiser (pipe.unet)")
    cfg = unet.config
    fields = {k: _plain(cfg.get(k)) for k in _UNET_KEYS}
    prediction = pipe.scheduler.config.get("prediction_type", "epsilon")
    return Fingerprint(denoiser=type(unet).__name__, prediction_type=prediction, **fields)
