"""GPU baselines: full-size SD 1.5 (512 px) and SDXL (1024 px), float16, 25 steps, guidance 7.5,
with and without torch.compile, written to reports/gpu-baselines.md (and one JSON per case).

Run on the target GPU: `python -m compress.bench.baselines --device cuda`.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime
from pathlib import Path

from compress.errors import CompressError
from compress.evaluate.settings import LatencyResult

CASES = (("sd15", 512), ("sdxl", 1024))
COLUMNS = ("text_encoder", "denoiser", "vae_decode", "other")


def measure_all(device: str, runs: int, json_dir: Path) -> list[tuple[str, LatencyResult]]:
    """Each case on a freshly built random-weight pipeline, without then with compile."""
    import torch

    from compress.evaluate.latency import measure_latency
    from compress.evaluate.report import bench_payload, write_json
    from compress.evaluate.settings import EvalSettings
    from compress.models.archs import build_arch_pipeline

    results = []
    for arch, size in CASES:
        pipe = build_arch_pipeline(arch, device=device, dtype="float16")
        for compile_ in (False, True):
            settings = EvalSettings(
                device=device,
                dtype="float16",
                resolution=size,
                steps=25,
                guidance_scale=7.5,
                timed_runs=runs,
                compile=compile_,
            )
            result = measure_latency(pipe, settings)
            tag = f"{arch}-{size}-fp16{'-compile' if compile_ else ''}"
            write_json(json_dir / f"{tag}.json", bench_payload(result, {"arch": arch}))
            results.append((arch, result))
            print(f"{tag}: {result.median_ms:.1f} ms", flush=True)
            torch._dynamo.reset()
        del pipe
        torch.cuda.empty_cache()
    return results


def markdown(results: list[tuple[str, LatencyResult]], command: str) -> str:
    """One table row per case: median end to end (± IQR), per component, compile, peak memory."""
    first = results[0][1]
    lines = [
        "# GPU baselines (random weights, published architectures)",
        "",
        f"Device: {first.device_name}. Measured {datetime.now(UTC).date()} with `{command}`.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in first.versions.items()) + ".",
        "Median of the timed runs after warm-up; ± is the interquartile range. Components are "
        "medians: text encoder(s), the denoiser over all steps, VAE decode; other is the "
        "scheduler, SDXL's VAE upcast to float32 (as the stock pipeline does) and image "
        "post-processing.",
        "",
        "| model | px | compile | total ms | " + " | ".join(COLUMNS) + " | compile s | peak MiB |",
        "|---|---|---|---|" + "---|" * len(COLUMNS) + "---|---|",
    ]
    for arch, r in results:
        s = r.settings
        compile_s = f"{r.compile_ms / 1e3:.1f}" if r.compile_ms is not None else "-"
        peak = f"{r.peak_memory_mb:.0f}" if r.peak_memory_mb is not None else "-"
        parts = " | ".join(f"{r.components_ms.get(c, 0.0):.1f}" for c in COLUMNS)
        lines.append(
            f"| {arch} | {s['resolution']} | {'yes' if s['compile'] else 'no'} | "
            f"{r.median_ms:.1f} ± {r.spread_ms:.1f} | {parts} | {compile_s} | {peak} |"
        )
    s = first.settings
    lines += [
        "",
        f"All rows: {s['dtype']}, batch {s['batch_size']}, {s['steps']} steps, guidance "
        f"{s['guidance_scale']}, {len(first.runs_ms)} timed runs.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    from compress._quiet import import_heavy
    from compress.evaluate.run import check_device
    from compress.fs import write_atomic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("reports/gpu-baselines.md"))
    args = parser.parse_args(argv)
    import_heavy()
    try:
        check_device(args.device)
    except CompressError as exc:
        raise SystemExit(f"error: {exc}") from None
    results = measure_all(args.device, args.runs, args.out.with_suffix(""))
    command = f"python -m compress.bench.baselines --device {args.device} --runs {args.runs}"
    write_atomic(args.out, markdown(results, command))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
