"""A small search with --max-memory and --track mlflow,tensorboard (one Ray search for both): every
trial records the peak memory of its sampling, a candidate above the limit is infeasible in the
ledger, summary.json and the report; the trials' knobs, scores and folders are logged to a local
MLflow store (read back with mlflow.search_runs) and to TensorBoard event files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from test_tracking import events  # the event-file reader
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
    "staged": {"enabled": False},  # both score fully: the trackers get their stage-2 scores
    "transforms": {
        "prune_blocks": {"fixed": {"preset": "small"}, "when": {"structure": "blocks"}},
        "sampler": {"fixed": {"scheduler": "euler", "steps": 1}},
    },
    "knobs": {"structure": {"type": "categorical", "choices": ["none", "blocks"]}},
}


def test_max_memory_excludes_a_candidate_and_trackers_log_every_trial(
    tiny_dir, tmp_path, monkeypatch
):
    from compress.models.tiny import build_tiny_pipeline

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space, run = tmp_path / "lean.yaml", tmp_path / "run"
    space.write_text(yaml.safe_dump(SPACE))
    # Below the unpruned pipeline's tensors alone: whatever its sampling adds, it is over.
    limit = round(0.95 * tensor_bytes(build_tiny_pipeline(), "cpu") / MIB, 2)
    args = ["search", "--space", str(space), "--model", str(tiny_dir), "--metric", "fidelity"]
    track = ["--track", "mlflow,tensorboard"]
    result = CliRunner().invoke(app, [*args, "--out", str(run), "--max-memory", str(limit), *track])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "search.json").read_text())["max_memory"] == limit

    records = {r.params["structure"]: r for r in read_records(run)}
    assert set(records) == {"none", "blocks"}
    for r in records.values():
        assert r.state == "complete", r.error
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

    _tracked(run.resolve(), read_records(run))


def _tracked(run: Path, records: list) -> None:
    """What MLflow and TensorBoard hold of the trials: knobs as params, the final scores."""
    import mlflow

    by_number = {r.number: r for r in records}
    mlflow.set_tracking_uri(f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[run.name], output_format="list")
    assert len(runs) == len(records) == 2
    for tracked in runs:
        r = by_number[int(tracked.data.tags["trial"])]
        assert tracked.info.status == "FINISHED"
        assert tracked.data.params == {"structure": r.params["structure"]}  # knobs only
        m = tracked.data.metrics  # the last value of each: the trial's final scores
        assert m["stage"] == 2 and m["quality"] == pytest.approx(r.quality)
        assert m["speedup"] == pytest.approx(r.speedup)
        assert [m["speedup_low"], m["speedup_high"]] == pytest.approx(r.speedup_ci)
        assert m["peak_memory_mb"] == pytest.approx(r.peak_memory_mb)
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(tracked.info.run_id)}
        assert {"recipe.yaml", "trial.json", "images"} <= names
        stored = Path(tracked.info.artifact_uri.removeprefix("file://"))
        assert stored.is_relative_to(run / "mlflow") and (stored / "recipe.yaml").is_file()

    for number, r in by_number.items():
        scalars, hparams = events(run / "tensorboard" / f"{number:04d}")
        assert hparams == {"structure": r.params["structure"]}  # knobs only
        assert scalars["ray/tune/quality"][-1] == pytest.approx(r.quality, rel=1e-6)
        assert scalars["ray/tune/speedup_low"][-1] == pytest.approx(r.speedup_ci[0], rel=1e-6)
        assert not any("number" in tag or "origin" in tag for tag in scalars)
