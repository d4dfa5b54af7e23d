"""The prepared GPU check: every row of `compress.bench.gpu_rows` on the SD1.5 (512 px), SDXL,
PixArt-Sigma and SD3-medium (1024 px) architectures with random weights (no download), timed side
by side in one process.

Per architecture, each row is built through the project's transforms on its own copy of the
denoiser, called once (compilation happens there), then all rows are timed in alternating rounds
against the baseline (`compress.evaluate.paired`). Writes reports/gpu.md and reports/gpu.json.

    bash scripts/gpu_check.sh               # on the GPU (bfloat16)
    bash scripts/gpu_check.sh --cpu-smoke   # the same rows on tiny configs, on the CPU
    bash scripts/gpu_check.sh --pending     # the report's structure without numbers
"""

from __future__ import annotations

import argparse
import copy
import gc
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compress.bench.gpu_report import pending_report, write_report
from compress.bench.gpu_rows import ROWS, Row, Target, baseline, default_steps, rows_for
from compress.errors import CompressError

ARCHS = {"sd15": 512, "sdxl": 1024, "pixart-sigma": 1024, "sd3-medium": 1024}
# tiny PixArt bins every request to 256 px (its transformer's sample size 32, 8x VAE)
SMOKE_ARCHS = {"tiny-sd15": 16, "tiny-sdxl": 16, "tiny-pixart-sigma": 256, "tiny-sd3-medium": 32}
# shares of the time budget, by the expected compile time and the length of a timed round
# (SDXL compiles about twice longer than SD1.5; PixArt-Sigma's 0.6 B transformer at 4096 tokens
# runs 20 steps, SD3-medium's 2 B one 28 steps with its T5 encoder)
WEIGHT = {"sd15": 1.0, "sdxl": 2.0, "pixart-sigma": 1.5, "sd3-medium": 2.0}
SMOKE_STEPS = 8  # the baseline's steps with --cpu-smoke
TINY_BLOCKS = 8  # tiny transformers' blocks: dit-fast's every-7th removal takes block 6
PROMPTS = {"gpu": ["a photo of a red car in a city street at night"], "cpu": ["a red seven"]}
# dense bfloat16 tensor-core peaks in TFLOP/s (vendor datasheets, without sparsity); first match
# of the device name wins, so the more specific names come first
PEAK_BF16_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L40", 181.0),
    ("L4", 121.0),
    ("A10G", 70.0),
)


@dataclass
class Built:
    """One row's pipeline, or why it has none."""

    row: Row
    pipe: Any = None
    steps: int | None = None
    compiled: bool = False
    flops: float | None = None  # one denoiser call, before quantization
    weights_mb: float | None = None
    first_ms: float | None = None  # the first call: compilation and warm-up
    error: str | None = None
    result: dict[str, Any] = field(default_factory=dict)


def log(start: float, msg: str) -> None:
    print(f"[{time.perf_counter() - start:6.1f} s] {msg}", flush=True)


def peak_tflops(device_name: str) -> float | None:
    return next((p for name, p in PEAK_BF16_TFLOPS if name in device_name), None)


def base_pipeline(target: Target) -> Any:
    from compress.models import tiny
    from compress.models.archs import build_arch_pipeline
    from compress.models.loading import parse_dtype

    if target.arch.startswith("tiny-"):
        build = {
            "tiny-sd15": tiny.build_tiny_pipeline,
            "tiny-sdxl": tiny.build_tiny_sdxl_pipeline,
            "tiny-pixart-sigma": lambda: tiny.build_tiny_pixart_pipeline(num_layers=TINY_BLOCKS),
            "tiny-sd3-medium": lambda: tiny.build_tiny_sd3_pipeline(num_layers=TINY_BLOCKS),
        }[target.arch]
        return build().to(target.device, parse_dtype(target.dtype))
    return build_arch_pipeline(target.arch, device=target.device, dtype=target.dtype)


def row_recipe(row: Row, target: Target) -> Any:
    from compress.recipe import Recipe

    transforms = row.transforms(target)
    if not any(t["kind"] == "sampler" for t in transforms):  # first: a cache reads its steps
        transforms = [baseline(target), *transforms]
    stage = _stages()
    transforms = sorted(transforms, key=lambda t: stage[t["kind"]])
    return Recipe(name=row.name.replace(" ", "-"), transforms=transforms)


def _stages() -> dict[str, int]:
    from compress.transforms.base import registry

    return {kind: int(spec.stage) for kind, spec in registry().items()}


def build_row(base: Any, row: Row, target: Target, recipe: Any, first: bool) -> Built:
    """The row's pipeline, sharing the text encoders with `base`. Every row but the first has
    its own denoiser (a copy: no row changes another's, and the per-call timing hooks of one
    row never see another's calls); a compiled row has its own VAE."""
    from compress.apply import apply_recipe
    from compress.context import RunContext
    from compress.models.denoiser import denoiser, denoiser_attr
    from compress.transforms.base import Stage

    kinds = {t.kind for t in recipe.transforms}
    compiled = "compile" in kinds
    net = denoiser(base) if first else copy.deepcopy(denoiser(base))
    parts = {denoiser_attr(base): net}
    parts["vae"] = copy.deepcopy(base.vae) if compiled else base.vae
    pipe = type(base).from_pipe(base, **parts)
    pipe.set_progress_bar_config(disable=True)
    ctx = RunContext(device=target.device)
    stage = _stages()
    early = [t for t in recipe.transforms if stage[t.kind] < Stage.numeric]
    late = [t for t in recipe.transforms if stage[t.kind] >= Stage.numeric]
    if early:
        apply_recipe(pipe, recipe.model_copy(update={"transforms": early}), ctx)
    if row.prepare is not None:
        row.prepare(pipe)
    flops = denoiser_flops(pipe, target)
    apply_recipe(pipe, recipe.model_copy(update={"transforms": late}), ctx)
    steps = recipe.find("sampler").steps  # type: ignore[union-attr]
    return Built(row, pipe, steps, compiled, flops, weights_mb(pipe))


def denoiser_flops(pipe: Any, target: Target) -> float:
    """FLOPs of one denoiser call as the pipeline makes it (inputs captured from a one-step run),
    counted by torch's FlopCounterMode on the eager network."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from compress.evaluate.latency import call_kwargs
    from compress.evaluate.timing import cpu_threads
    from compress.models.denoiser import denoiser

    net, calls = denoiser(pipe), []
    handle = net.register_forward_pre_hook(
        lambda m, a, k: calls.append((a, k)) if not calls else None, with_kwargs=True
    )
    settings = settings_for(target, warmup=0)
    # the baseline's guidance: the pipeline's own on transformers, 7.5 on UNets
    guidance = baseline(target)["guidance_scale"]
    kw = call_kwargs(pipe, settings) | {"num_inference_steps": 1}
    kw |= {} if guidance == "pipeline" else {"guidance_scale": guidance}
    # the timed runs' CPU threads: tiny ops on oversubscribed cores are otherwise slow to count
    with cpu_threads(settings.threads), torch.inference_mode():
        try:
            pipe(prompt=_prompts(target), output_type="latent", **kw)
        finally:
            handle.remove()
        args, kwargs = calls[0]
        with FlopCounterMode(display=False) as counter:
            net(*args, **kwargs)
    return float(counter.get_total_flops())


def weights_mb(pipe: Any) -> float:
    """Bytes of every distinct weight the pipeline holds (quantized tensors by their parts)."""
    seen: set[int] = set()
    total = 0
    for module in pipe.components.values():
        if not hasattr(module, "parameters"):
            continue
        for t in [*module.parameters(), *module.buffers()]:
            if id(t) not in seen:
                seen.add(id(t))
                total += _nbytes(t)
    return total / 2**20


def _nbytes(t: Any) -> int:
    if hasattr(t, "__tensor_flatten__"):  # torchao's quantized tensors: data, scales...
        names, _ = t.__tensor_flatten__()
        return sum(_nbytes(getattr(t, n)) for n in names)
    return t.numel() * t.element_size()


def _prompts(target: Target) -> list[str]:
    return PROMPTS["cpu" if target.arch.startswith("tiny-") else "gpu"]


def settings_for(target: Target, warmup: int) -> Any:
    from compress.evaluate.settings import EvalSettings

    # one thread on a CPU: oversubscribed cores (other work, OpenMP spinning) distort timings
    threads = 1 if target.device == "cpu" else None
    kw = {"resolution": target.resolution, "warmup": warmup, "threads": threads}
    return EvalSettings(device=target.device, **kw)


def first_call(built: Built, target: Target) -> None:
    """One untimed call per row on its own: compilation happens here, and a row that fails
    (a graph break under fullgraph, a kernel the device lacks) is reported instead of stopping
    the others."""
    from compress.evaluate.latency import Runner

    try:
        with Runner(built.pipe, settings_for(target, warmup=1), _prompts(target)) as runner:
            built.first_ms = runner.run()[0]
    except Exception as exc:  # noqa: BLE001  (any failure is the row's result)
        built.error = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        built.pipe = None


def measure(rows: list[Built], target: Target, rounds: int, warmup: int, peak: float | None):
    """All built rows in alternating rounds against the baseline; fills each `result`."""
    from compress.evaluate.paired import CANDIDATE, median_interval, paired_latency
    from compress.transforms.runtime.cache import cache_stats

    base = rows[0]
    others = {b.row.name: b for b in rows[1:] if b.pipe is not None}
    settings = settings_for(target, warmup)
    refs = {name: (b.pipe, settings) for name, b in others.items()}
    timing = paired_latency(base.pipe, refs, settings, rounds=rounds, prompts=_prompts(target))
    runs = {base.row.name: timing.runs_ms[CANDIDATE], **{n: timing.runs_ms[n] for n in others}}
    key = {base.row.name: CANDIDATE, **{n: n for n in others}}
    for b in [base, *others.values()]:
        name, k = b.row.name, key[b.row.name]
        mine = runs[name]
        per_call = [
            ms / max(timing.calls_per_run[k].get("denoiser", 1), 1)
            for ms in timing.components_ms[k]["denoiser"]
        ]
        ms_call = statistics.median(per_call)
        median = statistics.median(mine)
        run_peak = timing.run_peak_mb.get(k)
        calls = timing.calls_per_run[k].get("denoiser")
        cached = cache_stats(b.pipe)  # the last call's; None without a cache
        # a cached row's calls differ in cost (full or shallow): no single FLOPs per call
        mfu = b.flops / (ms_call / 1e3) / (peak * 1e12) if peak and b.flops else None
        b.result = {
            "median_ms": median,
            "iqr_ms": timing.spread_ms(k),
            "runs_ms": mine,
            "denoiser_calls": calls,
            "full_calls": cached["full_calls"] if cached else calls,
            "denoiser_ms_per_call": ms_call,
            "flops_per_call": b.flops,  # a full call
            "mfu": None if cached else mfu,
            "weights_mb": b.weights_mb,
            "run_peak_mb": run_peak,
            "peak_mb": b.weights_mb + run_peak if run_peak is not None else None,
            "compile_s": max(b.first_ms - median, 0.0) / 1e3 if b.compiled and b.first_ms else None,
            "x_baseline": _ratio(runs[base.row.name], mine, median_interval),
            "x_compile": _ratio(runs["compile"], mine, median_interval)
            if b.compiled and "compile" in runs and name != "compile"
            else None,
        }


def _ratio(ref: list[float], mine: list[float], boot: Any) -> dict[str, float]:
    return boot([r / m for r, m in zip(ref, mine, strict=True)]).model_dump()


@dataclass
class Budget:
    """Keeps the check inside its time limit. Each architecture has a deadline (its share of
    the budget, by weight, plus what earlier ones left); a compiled row is built only while its
    expected compile time and the architecture's timed rounds still fit before it, else it is
    reported as skipped (rerun it alone with --archs and --rows)."""

    start: float
    seconds: float | None
    compiles_s: list[float] = field(default_factory=list)  # first calls of compiled rows

    def deadline(self, done_weight: float, total_weight: float) -> float | None:
        if self.seconds is None:
            return None
        return self.start + self.seconds * done_weight / total_weight

    def allows(self, deadline: float | None, rounds_s: float) -> str | None:
        """None when a compile fits before `deadline`, else why not."""
        if deadline is None:
            return None
        # an unseen compile is guessed at a minute; a larger model's at twice the largest seen
        expected = 2 * max(self.compiles_s, default=30.0)
        left = deadline - time.perf_counter()
        if left > expected + rounds_s:
            return None
        return (
            f"skipped: over the check's time budget ({left:.0f} s left for this architecture, "
            f"compile expected {expected:.0f} s and timed rounds {rounds_s:.0f} s)"
        )


def run_arch(
    target: Target, rows: list[Row], rounds: int, warmup: int, budget: Budget, deadline: Any
) -> list:
    import torch

    from compress.evaluate.latency import device_name

    start = budget.start
    peak = peak_tflops(device_name(target.device)) if target.device.startswith("cuda") else None
    rows = rows_for(target.arch, rows)
    base = base_pipeline(target)
    log(start, f"{target.arch}: built the {target.resolution} px base pipeline")
    built: list[Built] = []
    for row in rows:
        rounds_s = 0.0
        if built and built[0].first_ms:  # no row runs longer than the eager 25-step baseline
            rounds_s = (rounds + warmup) * len(rows) * built[0].first_ms / 1e3
        try:
            recipe = row_recipe(row, target)
            late = budget.allows(deadline, rounds_s) if recipe.find("compile") else None
            b = Built(row, error=late) if late else build_row(base, row, target, recipe, not built)
        except CompressError as exc:  # e.g. a format this device cannot run
            b = Built(row, error=f"skipped: {exc}")
        if b.pipe is not None:
            first_call(b, target)
            if b.compiled and b.first_ms:
                budget.compiles_s.append(b.first_ms / 1e3)
        state = b.error or f"first call {b.first_ms / 1e3:.1f} s"
        log(start, f"{target.arch}: {row.name}: {state}")
        built.append(b)
    if built[0].pipe is None:
        raise CompressError(f"{target.arch}: the baseline failed ({built[0].error})")
    measure(built, target, rounds, warmup, peak)
    log(start, f"{target.arch}: timed {rounds} rounds")
    out = [_row_json(b) for b in built]
    del base, built
    gc.collect()
    torch._dynamo.reset()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


def _row_json(b: Built) -> dict[str, Any]:
    return {"row": b.row.name, "what": b.row.what, "steps": b.steps, "error": b.error, **b.result}


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny configs on the CPU")
    parser.add_argument("--pending", action="store_true", help="the structure, no numbers")
    parser.add_argument("--out", type=Path, help="markdown report (JSON beside it)")
    parser.add_argument("--archs", help="comma-separated subset of the architectures")
    parser.add_argument("--rows", help="comma-separated subset of the rows (baseline is kept)")
    parser.add_argument("--rounds", type=int, help="alternating timed rounds (GPU 4, smoke 2)")
    parser.add_argument(
        "--budget-s",
        type=float,
        help="seconds the measurements may take (GPU 420: 8 minutes with wheels and start-up; "
        "smoke: none); a compiled row that would not fit is skipped and named",
    )
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16"])
    parser.add_argument(
        "--steps",
        type=int,
        help="the baseline's step count (default: 25 on UNets, the pipeline's own on "
        f"transformers; smoke: {SMOKE_STEPS})",
    )
    args = parser.parse_args(argv)
    command = "bash scripts/gpu_check.sh " + " ".join(argv if argv is not None else sys.argv[1:])
    smoke = args.cpu_smoke
    if smoke:  # dynamo traces every row (a graph break fails); inductor's CPU build is too slow
        os.environ.setdefault("COMPRESS_COMPILE_BACKEND", "eager")
    out = args.out or Path("runs/gpu-smoke/gpu.md" if smoke else "reports/gpu.md")
    if args.pending:
        return write_report(out, pending_report(command.strip(), ARCHS))
    try:
        check(args, smoke, command.strip(), out)
    except CompressError as exc:
        raise SystemExit(f"error: {exc}") from None


def check(args: argparse.Namespace, smoke: bool, command: str, out: Path) -> dict[str, Any]:
    """Run every architecture; the report is rewritten after each, so a run cut short keeps
    what it measured."""
    from compress._quiet import import_heavy

    import_heavy()
    import torch

    from compress.evaluate.latency import device_name, versions
    from compress.models.runtime import compile_backend

    start = time.perf_counter()
    if not smoke and not torch.cuda.is_available():
        raise CompressError("no CUDA device: run on the GPU, or pass --cpu-smoke or --pending")
    # a silent fallback to eager after too many recompiles would corrupt the timings
    torch._dynamo.config.recompile_limit = 64
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    archs = SMOKE_ARCHS if smoke else ARCHS
    if args.archs:  # sd15 or tiny-sd15: the smoke runs the tiny one of each
        names = [a.strip().removeprefix("tiny-") for a in args.archs.split(",")]
        names = [f"tiny-{a}" if smoke else a for a in names]
        unknown = [a for a in names if a not in archs]
        if unknown:
            raise CompressError(f"unknown --archs {unknown}; choose from {', '.join(ARCHS)}")
        archs = {a: archs[a] for a in names}
    rows = list(ROWS)
    if args.rows:
        names = {r.strip() for r in args.rows.split(",")}
        unknown = sorted(names - {r.name for r in ROWS})
        if unknown:
            raise CompressError(
                f"unknown --rows {unknown}; rows: {', '.join(r.name for r in ROWS)}"
            )
        rows = [r for r in ROWS if r.name in names or r.name == "baseline"]
    device = "cpu" if smoke else "cuda"
    dtype = "float32" if smoke else args.dtype
    float8 = device == "cuda" and torch.cuda.get_device_capability() >= (8, 9)
    rounds = args.rounds or (2 if smoke else 4)
    warmup = 1
    env = {
        "date": datetime.now(UTC).date().isoformat(),
        "device": device_name(device),
        "dtype": dtype,
        "rounds": rounds,
        "warmup": warmup,
        "loadavg_before": _loadavg(),
        "threads": torch.get_num_threads(),
        "compile_backend": compile_backend(),
        "versions": versions(),
    }
    report = {
        "command": command,
        "environment": env,
        "rows": list(dict.fromkeys(r.name for r in rows)),
        "resolution": dict(archs),
        "archs": {},
    }
    seconds = args.budget_s if args.budget_s is not None else (None if smoke else 420.0)
    budget = Budget(start, seconds)
    env["budget_s"] = seconds
    total, done = sum(WEIGHT.get(a.removeprefix("tiny-"), 1.0) for a in archs), 0.0
    for arch, resolution in archs.items():
        # the smoke checks the rows' structure: 8 steps keep it within 3 minutes on 2 cores
        steps = args.steps or (SMOKE_STEPS if smoke else default_steps(arch))
        target = Target(arch, device, dtype, resolution, float8, steps)
        done += WEIGHT.get(arch.removeprefix("tiny-"), 1.0)
        deadline = budget.deadline(done, total)
        report["archs"][arch] = run_arch(target, rows, rounds, warmup, budget, deadline)
        env["loadavg_after"] = _loadavg()
        env["seconds"] = round(time.perf_counter() - start, 1)
        write_report(out, report)
    log(start, "done")
    return report


if __name__ == "__main__":
    main()
