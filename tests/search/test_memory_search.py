"""A miniature search with --max-memory: every trial records the peak memory of its sampling, and
a candidate above the limit is infeasible in the ledger, summary.json and the report."""

from __future__ import annotations

import csv
import json

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli import app
from compress.evaluate.memory import MIB, tensor_bytes
from compress.search.ledger import read_records, trial_dir

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster at a time

# Two start points: the whole tiny UNet, and one with its mid block and half its pairs removed.
SPACE = {
    "name": "lean",
    "search": {
        "trials": 2,
        "sampler": "tpe",
        "max_concurrent": 2,
        "cpus_per_trial": 1,
        "start": [{"structure": "none"}, {"structure": "blocks"}],
    },
    "evaluation": {"num_prompts": 2, "timed_runs": 1, "warmup": 0, "resolution": 16},
    "baseline": {"steps": 4},
    "staged": {"prompts": 1},
    "transforms": {
        "prune_blocks": {"fixed": {"preset": "small"}, "when": {"structure": "blocks"}},
        "sampler": {"fixed": {"scheduler": "euler", "steps": 1}},
    },
    "knobs": {"structure": {"type": "categorical", "choices": ["none", "blocks"]}},
}


def test_max_memory_excludes_a_candidate_above_it(tiny_dir, tmp_path):
    from compress.models.tiny import build_tiny_pipeline

    space, run = tmp_path / "lean.yaml", tmp_path / "run"
    space.write_text(yaml.safe_dump(SPACE))
    # Below the unpruned pipeline's tensors alone: whatever its sampling adds, it is over.
    limit = round(0.95 * tensor_bytes(build_tiny_pipeline(), "cpu") / MIB, 2)
    args = ["search", "--space", str(space), "--model", str(tiny_dir), "--metric", "fidelity"]
    result = CliRunner().invoke(app, [*args, "--out", str(run), "--max-memory", str(limit)])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "search.json").read_text())["max_memory"] == limit

    records = {r.params["structure"]: r for r in read_records(run)}
    assert set(records) == {"none", "blocks"}
    for r in records.values():
        assert r.state in ("complete", "stopped"), r.error
        assert 0 < r.peak_memory_mb < 1024
        assert r.feasible == (r.peak_memory_mb <= limit)
        on_disk = json.loads((trial_dir(run, r.number) / "trial.json").read_text())
        assert on_disk["peak_memory_mb"] == r.peak_memory_mb
    whole, pruned = records["none"], records["blocks"]
    assert whole.peak_memory_mb > limit and whole.constraints["max_memory"] > 0
    assert pruned.peak_memory_mb < whole.peak_memory_mb  # fewer weights, same batch

    summary = json.loads((run / "summary.json").read_text())
    assert summary["infeasible"] >= 1
    entries = {e["number"]: e for e in summary["per_trial"]}
    assert not entries[whole.number]["feasible"]
    assert all(e["peak_memory_mb"] > 0 for e in entries.values())
    assert whole.number not in {e["number"] for e in summary["front"]}
    assert all(e["peak_memory_mb"] <= limit for e in summary["front"])
    assert summary["baseline"]["scores"]["peak_memory_mb"] > 0
    rows = list(csv.DictReader((run / "trials.csv").open()))
    assert all(float(row["peak_memory_mb"]) > 0 for row in rows)

    page = (run / "report.html").read_text()
    assert "<h2>Peak memory and quality</h2>" in page and "max memory" in page
