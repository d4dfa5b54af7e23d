"""LoRAs trained on the uncompressed model: loaded on a compressed pipeline (`load_lora`), or fused
into the base weights before a recipe compresses them (`fuse_lora`, `compress apply --lora`).

diffusers' `pipe.load_lora_weights` matches a LoRA's keys to module names, and on a compressed
denoiser that goes wrong in ways it does not stop on:
- prune_blocks renumbers the pairs it keeps: a removed pair's LoRA lands silently on the pair
  renumbered into its place, and only the last pairs' keys are reported (a logged list);
- prune_channels narrows layers: peft stops on a size mismatch deep in its state-dict load;
- neural_compressor layers (and torchao's int4 tensors) are not layers peft can wrap;
- a compiled denoiser hides its modules under `_orig_mod` (the LoRA weights are left on the meta
  device), and fused QKV projections would bypass the LoRA of q, k and v.
`load_lora` reads the LoRA with diffusers' own `lora_state_dict`, gives the denoiser's keys the
pruned numbering, skips those of removed blocks with one warning naming them, refuses what cannot
load with an error saying what to do, and hands the rest to `pipe.load_lora_weights` (beneath
the compile transform, which is put back and compiles again at the next call).
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from compress.errors import CompressError

if TYPE_CHECKING:
    import torch
    from diffusers import DiffusionPipeline
    from torch import nn

    from compress.recipe import FusedLora

FUSE_FIRST = (
    "fuse the LoRA into the base model before compressing it: "
    "compress apply RECIPE --model BASE --out DIR --lora FILE"
)
FUSED_ADAPTER = "compress_fused"
# where a LoRA key's module path ends: peft (lora_A/B), DoRA, older diffusers (lora.down/up) and
# attention processors (what diffusers converts kohya's format to: `attn1.processor.to_q_lora`)
_SUFFIXES = (
    ".lora_A.",
    ".lora_B.",
    ".lora_magnitude_vector",
    ".lora.down.",
    ".lora.up.",
    ".processor.",
)


def load_lora(
    pipe: DiffusionPipeline,
    lora: str | Path | dict[str, torch.Tensor],
    adapter_name: str | None = None,
    **kwargs: Any,
) -> list[str]:
    """Load `lora` (a file, a folder or Hub id as diffusers reads them, or a state dict), trained
    on the uncompressed model, onto the compressed `pipe` as an adapter (`adapter_name`; `kwargs`
    go to diffusers' loader, e.g. `weight_name`). Returns the denoiser layers it skipped, by
    their names in the uncompressed model (those of blocks that prune_blocks removed), after
    warning once naming them; raises where a layer cannot take its LoRA."""
    from compress.models.denoiser import denoiser, denoiser_attr
    from compress.models.runtime import unprepared

    if not hasattr(pipe, "load_lora_weights"):
        raise CompressError(f"diffusers has no LoRA loader for {type(pipe).__name__}")
    if isinstance(lora, Path):
        lora = str(lora)
    read = pipe.lora_state_dict(lora, return_lora_metadata=True, **kwargs)
    state, rest = read[0], list(read[1:])  # rest: (network_alphas, metadata) or (metadata,)
    prefix = f"{denoiser_attr(pipe)}."
    net = denoiser(pipe)
    net = getattr(net, "_orig_mod", net)  # compiled: the module beneath
    names = _renames(net)
    adapted = {_module(k) for k in _layers(state, prefix)}
    skipped = adapted - names.keys()
    if skipped and skipped == adapted:
        raise CompressError(
            f"none of the LoRA's {len(skipped)} denoiser layers exist in this "
            f"{type(net).__name__} (e.g. {sorted(skipped)[0]}): it was trained for another model"
        )
    state = _fit(state, prefix, names)
    _check_layers(net, _layers(state, prefix))
    if len(rest) == 2 and rest[0]:  # network alphas, keyed like the weights
        rest[0] = _fit(rest[0], prefix, names)
    rest[-1] = _rename_metadata(rest[-1], prefix, names)
    if skipped:
        _warn_skipped(net, skipped, len(adapted) - len(skipped))
    with unprepared(pipe, "load a LoRA", fuse_qkv=False), _preread(pipe, (state, *rest)):
        pipe.load_lora_weights(lora, adapter_name=adapter_name, **kwargs)
    return sorted(skipped)


def fuse_lora(pipe: DiffusionPipeline, lora: str | Path, scale: float = 1.0) -> FusedLora:
    """Bake the LoRA file (or diffusers LoRA folder) `lora` into the pipeline's weights at `scale`
    with diffusers' `load_lora_weights`, `fuse_lora` and `unload_lora_weights`: the transforms
    that follow compress the model with it, and the result needs no LoRA loader. Returns what
    the recipe's provenance records."""
    from compress.recipe import FusedLora

    path = Path(lora).expanduser()
    if not path.exists():
        raise CompressError(f"--lora {path} does not exist; give a LoRA .safetensors file")
    load_lora(pipe, path, adapter_name=FUSED_ADAPTER)
    pipe.fuse_lora(lora_scale=scale, adapter_names=[FUSED_ADAPTER])
    pipe.unload_lora_weights()
    return FusedLora(file=path.name, sha256=_digest(path), scale=scale)


def _renames(net: nn.Module) -> dict[str, str]:
    """Module name in the unpruned denoiser -> its name in `net` (block pruning renumbers)."""
    from compress.transforms.prune.blocks import original_name

    return {original_name(net, n): n for n, _ in net.named_modules() if n}


def _module(key: str) -> str:
    """The module path of a LoRA key (without the component prefix)."""
    key = key.removesuffix(".alpha")  # a network alpha: `<module>.alpha` or `<weight key>.alpha`
    cut = [key.find(s) for s in _SUFFIXES if s in key]
    return key[: min(cut)] if cut else key


def _layers(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The denoiser's keys (`prefix` removed) in peft's format, converted from older formats as
    diffusers converts them when it loads them."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not out or "lora_A" in next(iter(out)):
        return out
    return convert_unet_state_dict_to_peft(out)


def _fit(state: dict[str, Any], prefix: str, names: dict[str, str]) -> dict[str, Any]:
    """The denoiser's keys (`prefix`) renamed to its pruned numbering, those of modules it does
    not have dropped; keys of other components (text encoders) unchanged."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            out[key] = value
            continue
        rest = key[len(prefix) :]
        module = _module(rest)
        if module in names:
            out[prefix + names[module] + rest[len(module) :]] = value
    return out


def _rename_metadata(
    metadata: dict[str, Any] | None, prefix: str, names: dict[str, str]
) -> dict[str, Any] | None:
    """diffusers' adapter metadata (a LoraConfig per component) with full module names of the
    unpruned denoiser, where a LoRA lists them, renamed (dropped: a removed block's); short
    names and patterns stay."""
    if not metadata:
        return metadata
    top = {n.split(".", 1)[0] for n in names}

    def rename(name: str) -> str | None:
        return names.get(name) if name.split(".", 1)[0] in top else name

    out = dict(metadata)
    for field in ("target_modules", "rank_pattern", "alpha_pattern"):
        value = out.get(prefix + field)
        if isinstance(value, list):
            out[prefix + field] = [r for n in value if (r := rename(n)) is not None]
        elif isinstance(value, dict):
            out[prefix + field] = {r: v for n, v in value.items() if (r := rename(n)) is not None}
    return out


def _check_layers(net: nn.Module, layers: dict[str, Any]) -> None:
    """Refuse, before anything loads, layers peft cannot wrap and layers whose widths differ from
    the LoRA's (pruned channels): a LoRA's down matrix (lora_A) reads the layer's input
    features, its up matrix (lora_B) writes its output features."""
    unsupported: dict[str, str] = {}
    narrowed: dict[str, str] = {}
    for key, value in layers.items():
        if getattr(value, "ndim", 0) < 2:
            continue
        name = _module(key)
        layer = net.get_submodule(name)
        why = _unwrappable(layer)
        if why:
            unsupported[name] = why
            continue
        down = ".lora_A." in key
        want = int(value.shape[1] if down else value.shape[0])
        have = _width(layer, "in" if down else "out")
        if have is not None and have != want:
            side = "input" if down else "output"
            narrowed[name] = f"{side} {have}, LoRA {want}"
    if unsupported:
        listed = "; ".join(f"{n} ({w})" for n, w in sorted(unsupported.items())[:4])
        raise CompressError(
            f"a LoRA cannot attach to {len(unsupported)} quantized layers of this denoiser "
            f"(peft wraps torch Linear/Conv layers, bitsandbytes and torchao int8 layers): "
            f"{listed}; {FUSE_FIRST}"
        )
    if narrowed:
        listed = "; ".join(f"{n} ({w})" for n, w in sorted(narrowed.items())[:4])
        pruned = " (prune_channels removed channels)" if _channels_pruned(net) else ""
        raise CompressError(
            f"{len(narrowed)} layers the LoRA adapts are narrower than it{pruned}: {listed}. "
            "A LoRA trained on the unpruned model cannot follow the kept channels (the recipe "
            f"records them per pruning group, not per layer); {FUSE_FIRST}"
        )


def _unwrappable(layer: nn.Module) -> str | None:
    """Why peft cannot put a LoRA on `layer` (None: it can)."""
    from torch import nn

    base = getattr(layer, "base_layer", layer)  # a layer that holds another adapter already
    if not isinstance(base, nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Embedding):
        return type(base).__name__
    weight = getattr(base, "weight", None)
    if type(weight).__name__ == "Int4Tensor":  # peft's torchao layer takes int8 weights only
        return "torchao Int4Tensor weights"
    return None


def _width(layer: nn.Module, side: str) -> int | None:
    base = getattr(layer, "base_layer", layer)
    for attr in (f"{side}_features", f"{side}_channels"):
        if isinstance(getattr(base, attr, None), int):
            return int(getattr(base, attr))
    return None


def _channels_pruned(net: nn.Module) -> bool:
    return bool(getattr(net, "_compress_channels_pruned", False))


def _warn_skipped(net: nn.Module, skipped: set[str], loaded: int) -> None:
    """One warning naming the skipped layers, grouped by the block they were in."""
    from compress.transforms.prune.blocks import REMOVALS

    present = set(_renames(net))
    blocks: Counter[str] = Counter()
    for name in skipped:
        parts = name.split(".")
        cut = next(i for i in range(1, len(parts) + 1) if ".".join(parts[:i]) not in present)
        blocks[".".join(parts[:cut])] += 1
    listed = ", ".join(f"{b} ({n} layers)" for b, n in sorted(blocks.items()))
    where = "in blocks that prune_blocks removed" if getattr(net, REMOVALS, None) else "absent"
    warnings.warn(
        f"LoRA: skipped the keys of {len(skipped)} layers {where}: {listed}; "
        f"the other {loaded} layers load",
        stacklevel=3,
    )


@contextlib.contextmanager
def _preread(pipe: DiffusionPipeline, read: tuple[Any, ...]) -> Iterator[None]:
    """`pipe.load_lora_weights` reads its LoRA with `self.lora_state_dict`; here that returns
    the state dict read and fitted above. A state dict passed in instead would lose what
    diffusers read beside it (kohya network alphas, the adapter's LoraConfig metadata), and
    diffusers offers no other way to hand its loader a prepared one."""
    pipe.lora_state_dict = lambda *args, **kwargs: read
    try:
        yield
    finally:
        del pipe.lora_state_dict


def _digest(path: Path) -> str:
    """SHA-256 of a LoRA file (as `sha256sum` gives it), or of a LoRA folder's weight files
    (their names and contents)."""
    if path.is_file():
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    digest = hashlib.sha256()
    for f in sorted(path.rglob("*.safetensors")):
        digest.update(f"{f.relative_to(path).as_posix()}\n".encode())
        with f.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def with_lora(digest: str | None, fused: FusedLora | None) -> str | None:
    """A base model's weights digest made that of the model with `fused` in it (shared teacher
    data drawn by one must not serve the other)."""
    if digest is None or fused is None:
        return digest
    return hashlib.sha256(f"{digest}\nlora {fused.sha256} {fused.scale}".encode()).hexdigest()
