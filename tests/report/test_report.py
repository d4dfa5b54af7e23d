"""The HTML report: one self-contained page built from a run folder's ledger."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image
from typer.testing import CliRunner

from compress.cli import app
from compress.recipe import Recipe, Scores, save_recipe
from compress.report import write_report
from compress.search.ledger import TrialRecord, trial_dir, write_json, write_record
from compress.search.results import finalize

POINTS = {
    0: (40.0, 0.70, "complete"),
    1: (20.0, 0.60, "complete"),
    2: (30.0, 0.50, "stopped"),
    3: (10.0, 0.20, "complete"),
    4: (None, None, "failed"),
    5: (78.0, 0.95, "complete"),  # best quality, but its speed-up interval reaches 1
}


def _image(path, colour):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), colour).save(path)


@pytest.fixture
def run(tmp_path):
    run = tmp_path / "run"
    write_json(
        run / "search.json",
        {
            "model": "tiny",
            "space": "tiny.yaml",
            "metric": "fidelity",
            "sampler": "tpe",
            "trials": 6,
            "max_concurrent": 2,
            "max_latency": 35.0,
            "min_quality": None,
        },
    )
    write_json(
        run / "baseline" / "scores.json",
        {
            "latency_ms": 80.0,
            "quality": 1.0,
            "prompts": ["a red digit", "a blue digit"],
            "components_ms": {"denoiser": 70.0, "vae_decode": 10.0},
            "scores": {
                "quality_metric": "fidelity",
                "quality_metric_version": "v1",
                "settings": {"device": "cpu", "steps": 50},
                "peak_memory_mb": 40.0,
            },
        },
    )
    for i in range(2):
        _image(run / "baseline" / "images" / f"{i:02d}.png", "white")
    for n, (lat, q, state) in POINTS.items():
        recipe = Recipe(
            name=f"tiny-t{n:04d}",
            transforms=[{"kind": "sampler", "steps": n + 1}],
            scores=Scores(latency_ms=lat, quality=q) if lat else None,
        )
        save_recipe(recipe, trial_dir(run, n) / "recipe.yaml")
        for i in range(2):
            _image(trial_dir(run, n) / "images" / f"{i:02d}.png", "red")
        write_record(
            run,
            TrialRecord(
                number=n,
                state=state,
                stage=2 if state == "complete" else 1,
                params={"steps": n + 1},
                recipe=recipe.name,
                transforms=[t.model_dump() for t in recipe.transforms],
                latency_ms=lat,
                reference_latency_ms=80.0 if lat else None,
                speedup=80.0 / lat if lat else None,
                speedup_ci=[72.0 / lat, 88.0 / lat] if lat else None,
                quality=q,
                peak_memory_mb=10.0 + lat / 4 if lat else None,
                constraints={"max_latency": lat - 35.0} if lat else {},
                error="ValueError: boom" if state == "failed" else None,
                components_ms={"denoiser": (lat or 0) * 0.8, "vae_decode": (lat or 0) * 0.2},
                reference_components_ms={"denoiser": 70.0, "vae_decode": 10.0},
                times={"stage1": 1.0, "stage2": 4.0, "trial": 6.0, "wall": 6.5},
            ),
        )
    return run


def test_report_is_one_self_contained_page(run):
    path = write_report(run)
    page = path.read_text()
    assert path == run / "report.html"
    assert "plotly.js v" in page  # the library itself is inline
    assert not re.search(r"<script[^>]+src=", page) and "<link" not in page  # nothing fetched
    # Front: trial 0 breaks max_latency (infeasible), 2 stopped, 4 failed, 5 is no faster than
    # the baseline (its interval reaches 1) -> trials 3 and 1.
    assert page.count("class='card'") == 2
    assert "id='trial-0001'" in page and "id='trial-0003'" in page
    assert "id='trial-0000'" not in page
    # Image grid per front point: baseline row and candidate row, PNG inline.
    assert page.count("<img src='data:image/png;base64,") == 2 * 2 * 2
    assert "uncompressed baseline" in page and "Pareto front (2)" in page
    assert "infeasible (breaks a constraint)" in page and "ValueError: boom" in page
    assert "steps=2" in page  # the recipe's transform parameters
    assert "8.00x [7.20, 8.80]" in page  # trial 3's paired speed-up with its interval
    assert "no faster than the baseline" in page
    assert (run / "recipes" / "tiny-t0003.yaml").is_file()  # the front, written as recipes


def test_report_plots_peak_memory_and_lists_it_for_every_trial(run):
    page = write_report(run).read_text()
    assert "<h2>Peak memory and quality</h2>" in page and 'id="memory"' in page
    assert "peak memory of sampling at the evaluation batch (MiB)" in page  # the figure's axis
    assert "<th>peak MiB</th>" in page and "<td>12.5</td>" in page  # trial 3: 10 + 10 / 4
    summary = json.loads((run / "summary.json").read_text())
    entries = {e["number"]: e for e in summary["per_trial"]}
    assert entries[0]["peak_memory_mb"] == 20.0 and not entries[0]["feasible"]
    assert entries[4]["peak_memory_mb"] is None  # failed before sampling
    assert [e["peak_memory_mb"] for e in summary["front"]] == [12.5, 15.0]
    assert "peak_memory_mb" in (run / "trials.csv").read_text().splitlines()[0]


def test_memory_as_an_objective_moves_the_front(run):
    import yaml

    # trial 6: slower and worse than trial 1, but it needs the least memory
    recipe = Recipe(name="tiny-t0006", transforms=[{"kind": "sampler", "steps": 7}])
    save_recipe(recipe, trial_dir(run, 6) / "recipe.yaml")
    write_record(
        run,
        TrialRecord(
            number=6, state="complete", stage=2, params={"steps": 7}, recipe=recipe.name,
            latency_ms=25.0, reference_latency_ms=80.0, speedup=3.2, speedup_ci=[3.0, 3.4],
            quality=0.55, peak_memory_mb=5.0, constraints={"max_latency": -10.0},
        ),
    )  # fmt: skip
    (run / "space.yaml").write_text(yaml.safe_dump({"objectives": ["latency", "quality"]}))
    assert [e["number"] for e in finalize(run)["front"]] == [3, 1]
    (run / "space.yaml").write_text(
        yaml.safe_dump({"objectives": ["latency", "quality", "memory"]})
    )
    summary = finalize(run)
    assert [e["number"] for e in summary["front"]] == [3, 1, 6]
    assert summary["objectives"] == ["latency", "quality", "memory"]
    assert len(summary["hypervolume_reference"]) == 3 and summary["hypervolume"] > 0
    page = write_report(run).read_text()
    assert "id='trial-0006'" in page and "relative latency x quality x peak memory" in page


def test_report_command(run, tmp_path):
    out = tmp_path / "page.html"
    result = CliRunner().invoke(app, ["report", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "Pareto front" in out.read_text()


def test_report_of_a_folder_that_is_no_run(tmp_path):
    with pytest.raises(Exception, match="not a search run folder"):
        write_report(tmp_path)
