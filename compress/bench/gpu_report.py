"""The GPU check's report: one markdown table per architecture (and the JSON beside it), or the
same structure with every number pending."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from compress.bench.gpu_rows import ROWS, Row, Skip, Target, default_steps, rows_for

PENDING = "pending: run scripts/gpu_check.sh on an H100"
COLUMNS = (
    "row",
    "steps",
    "denoiser calls",
    "end-to-end ms",
    "x baseline [95% CI]",
    "x compile [95% CI]",
    "denoiser ms/call",
    "MFU",
    "peak MiB",
    "compile s",
)


def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _ci(r: dict[str, float] | None) -> str:
    return "-" if r is None else f"{r['median']:.2f} [{r['low']:.2f}, {r['high']:.2f}]"


def _calls(r: dict[str, Any]) -> str:
    calls, full = r["denoiser_calls"], r.get("full_calls")
    return _fmt(calls, "d") + ("" if full in (None, calls) else f" ({full} full)")


def table(results: list[dict[str, Any]]) -> list[str]:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in results:
        if r.get("pending"):
            cells = [r["row"], _fmt(r["steps"], "d"), "pending", PENDING, *["pending"] * 6]
        elif r["error"]:
            cells = [r["row"], _fmt(r["steps"], "d"), r["error"], *["-"] * 7]
        else:
            cells = [
                r["row"],
                _fmt(r["steps"], "d"),
                _calls(r),
                f"{r['median_ms']:.1f} ± {r['iqr_ms']:.1f}",
                _ci(r["x_baseline"]),
                _ci(r["x_compile"]),
                _fmt(r["denoiser_ms_per_call"], ".2f"),
                _fmt(r["mfu"] and 100 * r["mfu"], ".1f") + ("%" if r["mfu"] else ""),
                _fmt(r["peak_mb"], ".0f"),
                _fmt(r["compile_s"], ".1f"),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = ["# GPU check: compression rows side by side", ""]
    if env.get("pending"):
        lines += [
            f"No GPU has run this check yet (`{report['command']}`, {env['date']}): the tables "
            "name every row and column; `bash scripts/gpu_check.sh` on one H100 fills them.",
            "",
        ]
    else:
        versions = ", ".join(f"{k} {v}" for k, v in env.get("versions", {}).items())
        lines += [
            f"Written by `{report['command']}` on {env['date']}. Device: {env['device']}; "
            f"{env['dtype']}; compile backend {env.get('compile_backend', 'inductor')}; "
            f"{env['rounds']} alternating rounds after a compiling first call and "
            f"{env['warmup']} more warm-up run(s); {env.get('seconds', '-')} s in all. Load "
            f"average before / after: {env['loadavg_before']} / {env.get('loadavg_after', '-')}.",
            f"Versions: {versions}.",
            "",
        ]
    lines += [
        "Random weights with the published architectures (no download); one prompt, batch 1, "
        "the architecture's native resolution. Every row is built through the project's "
        "transforms (`compress/bench/gpu_rows.py`):",
        "",
        *[
            f"- **{r.name}**: {r.what}"
            for r in ROWS
            if r.name in report["rows"] and any(r.applies(a) for a in report["archs"])
        ],
        "",
        "UNet-only rows (BK-SDM blocks, guidance embedding, DeepCache) are not offered for "
        "transformers, nor dit-fast blocks for UNets.",
        "",
    ]
    for arch, results in report["archs"].items():
        lines += [f"## {arch} ({report['resolution'][arch]} px)", "", *table(results), ""]
    lines += [
        "Columns: end-to-end ms is the median over rounds (± interquartile range); x baseline and"
        " x compile are speed-ups, the median of per-round ratios with its 95% distribution-free "
        "interval (x compile: a quantized or combined row against the unquantized `compile` row, "
        "under the same compile transform); denoiser ms/call is the denoiser's time per call "
        "(CUDA events around each call) and a cached row's calls are counted as all calls (the "
        "full ones in brackets); MFU is the FLOPs of one denoiser call (torch's FlopCounterMode "
        "on the network before quantization) over that time and the device's dense bf16 peak "
        "(empty for an unknown device, and for a cached row, whose calls differ in cost); peak "
        "MiB is the row's weights plus the largest allocator peak of a timed run above its start;"
        " compile s is the first call minus the median run.",
        "",
        *HOW_TO_RUN,
    ]
    return "\n".join(lines) + "\n"


HOW_TO_RUN = [
    "## How to run",
    "",
    "On a machine with one H100 (about 8 minutes, compile included): `bash scripts/gpu_check.sh` "
    "from the repository root. Its Python needs torch with CUDA; the other packages come from "
    "the current environment, or from wheels in `.whl/` when that folder exists (installed "
    "with `pip install --no-index --no-deps --target` into a temporary folder). To prepare "
    "`.whl/` on a machine with internet access (torchao must match the device's torch "
    "version):",
    "",
    "```bash",
    "pip download --no-deps --only-binary=:all: --python-version 3.12 \\",
    "  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \\",
    "  --platform manylinux2014_x86_64 -d .whl \\",
    "  diffusers==0.42.1 transformers==5.23.0 accelerate==1.15.0 torchao==0.18.0 \\",
    "  huggingface-hub==2.4.0 tokenizers==0.23.3 safetensors==0.8.0 hf-xet==1.8.0 \\",
    "  pydantic==2.14.3 pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 \\",
    "  pyyaml==6.0.3 regex==2026.11.15 numpy==2.4.6 pillow==13.0.0 psutil==7.2.2 \\",
    "  packaging==26.3 tqdm==4.70.1 requests==2.34.2 urllib3==2.8.0 idna==3.20 \\",
    "  certifi==2026.10.18 charset-normalizer==3.5.2 importlib-metadata==10.2.0 zipp==4.1.2 \\",
    "  httpx2==2.16.2 httpcore2==2.16.2 h11==0.16.0 anyio==4.16.0 lazy-importer==0.1.0 \\",
    "  typer==0.29.2 click==8.5.1 rich==15.0.0 shellingham==1.5.4 markdown-it-py==4.3.0 \\",
    "  mdurl==0.1.2 pygments==2.21.0 annotated-doc==0.0.7 truststore==0.10.5",
    "```",
    "",
    "The measurements keep to `--budget-s` (420 s by default): a compiled row whose compile "
    "would not leave time for the timed rounds is reported as skipped; rerun it alone, e.g. "
    '`bash scripts/gpu_check.sh --archs sdxl --rows "int8 + compile" --out reports/gpu-sdxl.md` '
    "(`--rounds N` changes the rounds). `--cpu-smoke` runs the same rows on tiny configs on "
    "the CPU (under 3 minutes on 2 cores; compile backend eager unless "
    "COMPRESS_COMPILE_BACKEND says otherwise).",
]


def pending_report(command: str, archs: dict[str, int]) -> dict[str, Any]:
    """The report's structure with every row named and no number."""
    env = {"pending": True, "date": datetime.now(UTC).date().isoformat(), "dtype": "bfloat16"}
    results = {
        a: [
            {"row": r.name, "steps": _static_steps(r, t), "pending": True, "what": r.what}
            for r in rows_for(a)
        ]
        for a, t in (
            (a, Target(a, "cuda", "bfloat16", px, True, default_steps(a)))
            for a, px in archs.items()
        )
    }
    return {
        "command": command,
        "environment": env,
        "rows": list(dict.fromkeys(r.name for r in ROWS)),
        "resolution": dict(archs),
        "archs": results,
    }


def _static_steps(row: Row, target: Target) -> int | None:
    try:
        sampler = [t for t in row.transforms(target) if t["kind"] == "sampler"]
    except Skip:
        return None
    return sampler[0]["steps"] if sampler else target.steps


def write_report(out: Path, report: dict[str, Any]) -> None:
    from compress.fs import write_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, markdown(report))
    write_atomic(out.with_suffix(".json"), json.dumps(report, indent=2, default=str) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json')}")
