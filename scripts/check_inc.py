"""Checks behind reports/quantization.md for the neural_compressor formats (CPU).

    python scripts/check_inc.py whole [--sd15]   # whole-denoiser PT2E export + static int8
    python scripts/check_inc.py reload inc_static_int8 inc_rtn_int4 inc_gptq_int4

`whole` exports the entire denoiser as one graph (the miniature's, and with --sd15 an
SD1.x-shaped one with random weights, 32x32 latents), quantizes it with StaticQuantConfig on one
batch and reports the error and whether another batch size still runs. `reload` quantizes every
unprotected Linear layer of the miniature to each format, saves the artifact, loads it with
`compress.load` and compares a 20-step image.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any


def whole(name: str, unet: Any, size: int, ctx_dim: int, seq: int) -> None:
    import torch
    from neural_compressor.torch.export import export
    from neural_compressor.torch.quantization import StaticQuantConfig, convert, prepare

    class Positional(torch.nn.Module):  # torch.export takes positional tensors
        def __init__(self, unet: Any) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x: torch.Tensor, t: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
            return self.unet(x, t, e, return_dict=False)[0]

    unet.eval()
    x, t, e = torch.randn(2, 4, size, size), torch.tensor([999, 10]), torch.randn(2, seq, ctx_dim)
    with torch.no_grad():
        ref = unet(x, t, e).sample
    t0 = time.perf_counter()
    graph = export(Positional(unet), (x, t, e))
    exported = time.perf_counter() - t0
    graph = prepare(graph, StaticQuantConfig())
    with torch.no_grad():
        graph(x, t, e)
        graph = convert(graph)
        out = graph(x, t, e)
    err = float((out - ref).norm() / ref.norm())
    print(
        f"{name}: export {exported:.1f} s, export+prepare+calibrate+convert "
        f"{time.perf_counter() - t0:.1f} s, relative error {err:.4f}",
        flush=True,
    )
    try:
        with torch.no_grad():
            graph(torch.randn(4, 4, size, size), torch.arange(4), torch.randn(4, seq, ctx_dim))
        print(f"{name}: batch 4 after exporting with batch 2 runs")
    except Exception as exc:  # noqa: BLE001  (the point is to report it)
        print(f"{name}: batch 4 after exporting with batch 2 fails: {str(exc).splitlines()[0]}")


def reload(formats: list[str]) -> None:
    import torch

    from compress.apply import apply_recipe
    from compress.artifact import load_artifact, save_artifact
    from compress.context import RunContext
    from compress.models.loading import load_pipeline
    from compress.recipe import Recipe

    def image(pipe: Any) -> Any:
        g = torch.Generator().manual_seed(0)
        return pipe("a red seven", num_inference_steps=20, generator=g, output_type="np").images

    for fmt in formats:
        pipe = load_pipeline("miniature")
        rules = [{"match": "re:.*", "format": fmt}]
        recipe = Recipe(name=fmt, transforms=[{"kind": "quantize", "rules": rules}])
        t0 = time.perf_counter()
        applied = apply_recipe(pipe, recipe, RunContext())
        took = time.perf_counter() - t0
        folder = save_artifact(pipe, applied, tempfile.mkdtemp() + "/artifact")
        t0 = time.perf_counter()
        loaded = load_artifact(folder)
        load_s = time.perf_counter() - t0
        same = bool((image(pipe) == image(loaded)).all())
        print(f"{fmt}: apply {took:.1f} s, load {load_s:.1f} s, reloaded image identical: {same}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("check", choices=["whole", "reload"])
    p.add_argument("formats", nargs="*")
    p.add_argument("--sd15", action="store_true", help="whole: also an SD1.x-shaped denoiser")
    args = p.parse_args()

    from compress._quiet import import_heavy, silence

    import_heavy()
    silence()
    if args.check == "reload":
        reload(args.formats or ["inc_static_int8", "inc_rtn_int4", "inc_gptq_int4"])
        return
    from compress.models.loading import load_pipeline

    pipe = load_pipeline("miniature")
    cfg = pipe.unet.config
    whole(
        "miniature",
        pipe.unet,
        cfg.sample_size,
        cfg.cross_attention_dim,
        pipe.tokenizer.model_max_length,
    )
    if args.sd15:
        from diffusers import UNet2DConditionModel

        whole("sd15-shaped", UNet2DConditionModel(cross_attention_dim=768), 32, 768, 77)


if __name__ == "__main__":
    main()
