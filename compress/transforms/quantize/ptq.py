"""Post-training quantization with ordered per-layer precision rules (stage numeric)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from compress.context import RunContext
from compress.errors import CompressError, RestoreMismatch
from compress.transforms.base import Metadata, Stage, TransformConfig, register_transform
from compress.transforms.quantize._calibration import Calibration
from compress.transforms.quantize.backends import FORMATS, FormatName

if TYPE_CHECKING:
    import torch.nn as nn
    from diffusers import DiffusionPipeline

    from compress.evaluate.settings import Scores

# Layers whose error reaches every pixel at every step stay in full precision unless overridden:
# a UNet's first and last convolutions and timestep (and SDXL's added-condition) embeddings; a
# diffusion transformer's patch embedding, output projection and norm, timestep and caption
# embeddings (and an added guidance embedding).
PROTECTED = ("conv_in", "conv_out", "time_embedding", "add_embedding")
PROTECTED += (
    "pos_embed",
    "patch_embed",
    "proj_out",
    "norm_out",
    "adaln_single",
    "time_embed",
    "time_text_embed",
    "caption_projection",
    "context_embedder",
    "compress_guidance",
)
# block groups a rule may name by one field: UNet stages, or the parts of transformer blocks
GROUPS = {
    "down_blocks": r"down_blocks\..*",
    "mid_block": r"mid_block\..*",
    "up_blocks": r"up_blocks\..*",
    "attention": r"transformer_blocks\.\d+\.attn\d*\..*",
    "feed_forward": r"transformer_blocks\.\d+\.ff(_context)?\..*",
}


def _check_pattern(value: str) -> str:
    if value.startswith("re:"):
        try:
            re.compile(value[3:])
        except re.error as exc:
            raise ValueError(f"invalid regular expression {value[3:]!r}: {exc}") from None
    elif not value:
        raise ValueError("empty module name")
    return value


class Rule(BaseModel):
    """Layers named `match` (a module name, which covers its children, or `re:<regex>` fully
    matching layer names) take `format`; `none` keeps them in full precision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    match: str
    format: FormatName | Literal["none"]

    @field_validator("match")
    @classmethod
    def _match(cls, value: str) -> str:
        return _check_pattern(value)


class QuantizeConfig(TransformConfig):
    """Ordered precision rules over the denoiser's Linear layers; the first matching rule wins."""

    kind: Literal["quantize"] = "quantize"
    # default: every unprotected Linear layer to int8 weights and int8 dynamic activations
    rules: list[Rule] = Field(
        default_factory=lambda: [Rule(match="re:.*", format="int8_dynamic")], min_length=1
    )
    protect: list[str] = Field(default_factory=lambda: list(PROTECTED))
    # denoiser inputs along sampling trajectories, for the calibrated formats (inc_static_int8,
    # inc_gptq_int4); other formats ignore it
    calibration: Calibration = Field(default_factory=Calibration)
    # one format per block group, as rules placed ahead of `rules` (what search knobs set);
    # None adds no rule, "none" keeps the group in full precision. UNets: down_blocks,
    # mid_block, up_blocks; diffusion transformers: attention (every block's attention
    # projections) and feed_forward (every block's feed-forward layers)
    down_blocks: FormatName | Literal["none"] | None = None
    mid_block: FormatName | Literal["none"] | None = None
    up_blocks: FormatName | Literal["none"] | None = None
    attention: FormatName | Literal["none"] | None = None
    feed_forward: FormatName | Literal["none"] | None = None

    @field_validator("protect")
    @classmethod
    def _protect(cls, value: list[str]) -> list[str]:
        return [_check_pattern(v) for v in value]

    def groups(self) -> dict[str, str]:
        """The block-group fields that are set: group -> format."""
        return {g: getattr(self, g) for g in GROUPS if getattr(self, g) is not None}

    def group_rules(self) -> dict[str, Rule]:
        """Block group -> the rule its knob adds (a UNet group the model lacks, e.g. a mid block
        that pruning removed, is skipped rather than an error: the knob composes with pruning)."""
        return {g: Rule(match=f"re:{GROUPS[g]}", format=f) for g, f in self.groups().items()}

    def all_rules(self) -> list[Rule]:
        """The block-group rules, then `rules`: the order in which they are matched."""
        return list(self.group_rules().values()) + list(self.rules)

    def saves_natively(self) -> bool:
        """neural_compressor layers are saved as their own tensors and rebuilt on load."""
        return not any(
            r.format != "none" and FORMATS[r.format].backend == "neural_compressor"
            for r in self.all_rules()
        )


def _covers(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return name == pattern or name.startswith(pattern + ".")


def linear_layers(model: nn.Module) -> dict[str, nn.Module]:
    import torch.nn as nn

    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def resolve(model: nn.Module, cfg: QuantizeConfig) -> tuple[dict[str, str], list[str]]:
    """Layer name -> format for every layer a rule quantizes, and the protected layer names.

    Raises on a rule that selects no Linear layer (a typo, or another architecture) and on a rule
    that names a protected or non-Linear module directly.
    """
    unet = hasattr(model, "down_blocks")
    wrong = [g for g in cfg.groups() if (g in ("attention", "feed_forward")) == unet]
    if wrong:
        fits = "down_blocks, mid_block, up_blocks" if unet else "attention, feed_forward"
        raise CompressError(
            f"quantize: {', '.join(wrong)} name block groups of another denoiser class; "
            f"{type(model).__name__} has {fits}"
        )
    linears = linear_layers(model)
    modules = dict(model.named_modules())
    protected = sorted(n for n in linears if any(_covers(p, n) for p in cfg.protect))
    absent = [r for g, r in cfg.group_rules().items() if unet and modules.get(g) is None]
    assign: dict[str, str] = {}
    for rule in cfg.all_rules():
        if rule in absent:
            continue
        where = f"rule (match {rule.match!r}, format {rule.format!r})"
        if not rule.match.startswith("re:"):
            if rule.match not in modules:
                raise CompressError(f"{where}: the denoiser has no module named {rule.match!r}")
            target = modules[rule.match]
            if not linears.get(rule.match) and not any(_covers(rule.match, n) for n in linears):
                raise CompressError(
                    f"{where}: {rule.match} is a {type(target).__name__} with no Linear layers; "
                    "the formats quantize Linear layers (convolutions stay in full precision)"
                )
            if rule.match in protected or any(_covers(p, rule.match) for p in cfg.protect):
                raise CompressError(
                    f"{where}: {rule.match} is protected; remove it from `protect` to quantize it"
                )
        hits = [n for n in linears if _covers(rule.match, n)]
        if not hits:
            group = next((g for g, f in cfg.groups().items() if GROUPS[g] == rule.match[3:]), None)
            raise CompressError(
                f"quantize: {group} selects no Linear layer of {type(model).__name__} (its "
                "layers there are convolutions, which stay in full precision)"
                if group
                else f"{where} selects no Linear layer of the denoiser"
            )
        for name in hits:
            if name not in protected and name not in assign:
                assign[name] = rule.format
    return {n: f for n, f in assign.items() if f != "none"}, protected


def _backend(assign: dict[str, str]) -> str:
    backends = {FORMATS[f].backend for f in assign.values()}
    if len(backends) > 1:
        raise CompressError(
            f"one quantize transform uses one backend; the rules mix {sorted(backends)} "
            f"(formats {sorted(set(assign.values()))})"
        )
    return backends.pop()


def backend_module(backend: str) -> Any:
    """The module implementing `backend` (check, quantize, quantized_names)."""
    from compress.transforms.quantize.backends import bitsandbytes, neural_compressor, torchao

    return {"torchao": torchao, "bitsandbytes": bitsandbytes}.get(backend, neural_compressor)


def _quantize(pipe: DiffusionPipeline, cfg: QuantizeConfig, ctx: RunContext) -> Metadata:
    from compress.models.denoiser import denoiser, denoiser_attr

    unet = denoiser(pipe)
    assign, protected = resolve(unet, cfg)
    if not assign:
        raise CompressError("the rules quantize no layer (every match has format 'none')")
    backend = _backend(assign)
    module = backend_module(backend)
    module.check(unet, assign, ctx.device)  # before any work
    extra: Metadata = {}
    if backend == "torchao":
        new = module.quantize(unet, assign)
    elif backend == "bitsandbytes":
        new = module.quantize(unet, assign, sorted(linear_layers(unet)))
    else:
        run = None
        if set(assign.values()) & set(module.CALIBRATED):
            from compress.transforms.quantize._calibration import (
                calibration_calls,
                replay,
                timesteps_of,
            )

            calls = calibration_calls(pipe, cfg.calibration, ctx)
            run = lambda model: replay(model, calls)  # noqa: E731
            extra["calibration"] = {
                **cfg.calibration.model_dump(),
                "seed": ctx.seed,
                "timesteps_kept": timesteps_of(calls),
            }
        new = module.quantize(unet, assign, run)
    pipe.register_modules(**{denoiser_attr(pipe): new})
    return {
        "backend": backend,
        "modules": dict(sorted(assign.items())),
        "protected": protected,
        **extra,
        # diffusers loads torchao models in bfloat16 unless told the dtype
        "load_dtype": str(unet.dtype).removeprefix("torch."),
    }


def _check_resolves(pipe: DiffusionPipeline, cfg: QuantizeConfig, metadata: Metadata) -> None:
    from compress.models.denoiser import denoiser

    assign, _ = resolve(denoiser(pipe), cfg)
    if assign != metadata["modules"]:
        diff = sorted(set(assign.items()) ^ set(metadata["modules"].items()))
        raise RestoreMismatch(f"quantize: rules resolve differently on this model: {diff[:5]}")


def _restore(pipe: DiffusionPipeline, cfg: QuantizeConfig, metadata: Metadata) -> None:
    from compress.models.denoiser import denoiser

    net = denoiser(pipe)
    backend = backend_module(metadata.get("backend", "torchao"))
    loaded = getattr(net, "hf_quantizer", None) is not None
    if metadata.get("backend") == "neural_compressor":
        loaded = bool(backend.quantized_names(net))
    if loaded:  # loaded already quantized
        got = sorted(backend.quantized_names(net))
        if got != sorted(metadata["modules"]):
            raise RestoreMismatch(
                f"quantize: the loaded denoiser has quantized layers {got} but the recipe "
                f"recorded {sorted(metadata['modules'])}"
            )
        return
    _check_resolves(pipe, cfg, metadata)
    if "calibration" in metadata:
        raise RestoreMismatch(
            "quantize: calibrated formats depend on the calibration data, which a recipe does "
            "not hold; load the saved artifact (compress.load) instead of restoring"
        )
    _quantize(pipe, cfg, RunContext(device=str(pipe.device)))


def _on_load(pipe: DiffusionPipeline, cfg: QuantizeConfig, metadata: Metadata) -> None:
    """neural_compressor layers: empty layers of the recorded formats, filled by the saved
    weights (diffusers' own quantizers load the other backends natively)."""
    if metadata.get("backend") != "neural_compressor":
        return
    from compress.models.denoiser import denoiser
    from compress.transforms.quantize.backends import neural_compressor

    _check_resolves(pipe, cfg, metadata)
    neural_compressor.shells(denoiser(pipe), metadata["modules"])


@register_transform(QuantizeConfig, stage=Stage.numeric, restore=_restore, on_load=_on_load)
def apply_quantize(pipe: DiffusionPipeline, cfg: QuantizeConfig, ctx: RunContext) -> Metadata:
    """Quantize the denoiser's Linear layers, each to the format of the first rule matching it."""
    return _quantize(pipe, cfg, ctx)


NOT_FASTER = "quantized-but-not-faster"


def flag_if_not_faster(candidate: Scores) -> Scores:
    """Add `quantized-but-not-faster` unless the paired speed-up over the unquantized parent has
    its whole 95% interval above 1 (`parent_speedup_ci`, measured in alternating rounds)."""
    if candidate.parent_speedup_ci is None:
        raise CompressError("the quantized candidate needs a paired speed-up over its parent")
    faster = candidate.parent_speedup_ci[0] > 1.0
    flags = [f for f in candidate.flags if f != NOT_FASTER] + ([] if faster else [NOT_FASTER])
    return candidate.model_copy(update={"flags": flags})
