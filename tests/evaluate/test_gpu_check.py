"""The prepared GPU check: its CPU smoke run writes every row, and the pending report names them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from compress.bench.gpu_check import ARCHS, main, peak_tflops
from compress.bench.gpu_report import PENDING
from compress.bench.gpu_rows import rows_for

ROOT = Path(__file__).resolve().parents[2]
COMPILED = {"compile", "int8 + compile", "combination"}


def names(arch: str) -> list[str]:
    return [r.name for r in rows_for(arch)]


def table_rows(markdown: str) -> list[str]:
    return [line.split("|")[1].strip() for line in markdown.splitlines() if line.startswith("| ")]


def test_cpu_smoke_measures_every_row(tmp_path: Path) -> None:
    # Kept short: 8 baseline steps, and dynamo switched off (the compile rows still wrap their
    # modules; tracing them is what test_compile.py and the contract suite check).
    out = tmp_path / "gpu.md"
    env = {**os.environ, "PYTHON": sys.executable, "TORCHDYNAMO_DISABLE": "1"}
    cmd = ["bash", "scripts/gpu_check.sh", "--cpu-smoke", "--steps", "8", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads(out.with_suffix(".json").read_text())
    assert list(report["archs"]) == [f"tiny-{a}" for a in ARCHS]
    for arch, results in report["archs"].items():
        rows = {r["row"]: r for r in results}
        assert list(rows) == names(arch)
        assert rows["float8 + compile"]["error"].startswith("skipped: float8_dynamic needs")
        done = {n: r for n, r in rows.items() if n != "float8 + compile"}
        assert all(r["error"] is None and r["median_ms"] > 0 for r in done.values()), done
        calls = {n: r["denoiser_calls"] for n, r in done.items()}
        assert calls == {n: (4 if n in ("4 steps", "combination") else 8) for n in done}
        flops = {n: r["flops_per_call"] for n, r in done.items()}
        assert flops["int8 + compile"] == flops["compile"] == flops["baseline"]
        assert all((r["compile_s"] is not None) == (n in COMPILED) for n, r in done.items())
        assert done["int8 + compile"]["x_compile"]["low"] > 0
        assert done["4 steps"]["x_baseline"]["median"] > 1  # 4 steps against 8, same network
        if arch in ("tiny-pixart-sigma", "tiny-sd3-medium"):
            # every 7th of 8 blocks removed: one block's share of the call
            assert 0.75 < flops["dit-fast blocks"] / flops["baseline"] < 0.95
            assert flops["combination"] == flops["dit-fast blocks"]
            continue
        # guidance as an input: one call per step at batch 1 instead of a batch-2 call
        assert 0.45 < flops["guidance-embedded"] / flops["baseline"] < 0.55
        assert flops["bk-sdm-small blocks"] < flops["baseline"]
        # DeepCache, interval 3: the whole UNet on steps 0, 3 and 6 of 8, the shallow branch
        # on the others; no MFU for calls of two costs
        cached = done["deepcache"]
        assert cached["full_calls"] == 3 and done["baseline"]["full_calls"] == 8
        assert cached["mfu"] is None and cached["flops_per_call"] == flops["baseline"]
    text = out.read_text()
    assert table_rows(text).count("combination") == 4
    assert "| deepcache | 8 | 8 (3 full) |" in text


def test_pending_report_names_every_row(tmp_path: Path) -> None:
    out = tmp_path / "gpu.md"
    main(["--pending", "--out", str(out)])
    expected = [name for arch in ARCHS for name in ["row", *names(arch)]]
    assert names("sd15") == names("sdxl") and names("pixart-sigma") == names("sd3-medium")
    assert "deepcache" in names("sd15") and "dit-fast blocks" in names("sd3-medium")
    assert not {"guidance-embedded", "deepcache"} & set(names("pixart-sigma"))
    for text in (out.read_text(), (ROOT / "reports" / "gpu.md").read_text()):
        assert table_rows(text) == expected  # sd15, sdxl, pixart-sigma, sd3-medium
        assert text.count(PENDING) == len(expected) - len(ARCHS)


def test_peak_table() -> None:
    assert peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert peak_tflops("NVIDIA L40S") == 362.0 and peak_tflops("NVIDIA L4") == 121.0
    assert peak_tflops("AMD EPYC 7B13") is None


def test_budget_skips_a_compile_that_would_not_fit() -> None:
    import time

    from compress.bench.gpu_check import Budget

    now = time.perf_counter()
    assert Budget(now, None).allows(None, rounds_s=1e9) is None  # no budget: everything runs
    budget = Budget(now, 100.0)
    deadline = budget.deadline(1.0, 3.0)  # the first architecture's share: a third
    assert deadline is not None and abs(deadline - now - 100 / 3) < 1e-6
    assert "over the check's time budget" in budget.allows(deadline, rounds_s=0.0)  # 60 s guess
    budget.compiles_s.append(5.0)
    assert budget.allows(deadline, rounds_s=10.0) is None  # 10 s compile + 10 s rounds fit
    assert budget.allows(deadline, rounds_s=30.0) is not None
