"""A real search on the tiny pipeline: Ray Tune + OptunaSearch, ledger, failures, resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import CompressError
from compress.recipe import load_recipe
from compress.search.config import resolve_config, resume_config
from compress.search.ledger import read_records, trial_dir, write_json
from compress.search.runner import run_search

SPACE = {
    "name": "tiny",
    "search": {"trials": 3, "sampler": "tpe", "max_concurrent": 2, "cpus_per_trial": 1, "seed": 3},
    "evaluation": {"num_prompts": 2, "timed_runs": 1, "warmup": 0, "resolution": 16},
    "staged": {"prompts": 1, "quality_margin": 0.0},
    "transforms": {"sampler": {"fixed": {"steps": 1}}},
    # PNDM cannot sample in one step (diffusers raises): those trials must fail, not the search.
    "knobs": {
        "scheduler": {
            "sets": "sampler.scheduler",
            "type": "categorical",
            "choices": ["euler", "ddim", "pndm"],
        }
    },
}


@pytest.fixture(scope="module")
def first_run(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("search")
    space = folder / "tiny.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    cfg, sp = resolve_config(
        str(space), model=str(tiny_dir), metric="fidelity", out=str(folder / "run")
    )
    summary = run_search(cfg, sp)
    return cfg, summary


def test_search_keeps_every_trial_and_writes_the_front(first_run):
    cfg, summary = first_run
    run = cfg.run
    records = read_records(run)
    assert [r.number for r in records] == [0, 1, 2]
    assert summary["baseline"]["quality"] == pytest.approx(1.0)  # fidelity of itself
    for r in records:
        folder = trial_dir(run, r.number)
        assert (folder / "log.txt").read_text()
        assert (folder / "recipe.yaml").is_file() and (folder / "config.json").is_file()
        if r.state == "failed":
            assert r.params["scheduler"] == "pndm" and r.error and r.latency_ms is None
            assert "failed" in (folder / "log.txt").read_text()
        else:
            assert r.params["scheduler"] != "pndm"
            assert r.latency_ms > 0 and r.times["trial"] > 0
            # paired against the baseline's own call (50 steps here) in the trial's worker
            assert r.reference_latency_ms > r.latency_ms and r.speedup > 1
            low, high = r.speedup_ci
            assert low <= r.speedup <= high
            assert r.duplicate_of is not None or list((folder / "images").glob("*.png"))
    # The front: appliable recipes carrying their scores and settings.
    recipes = sorted((run / "recipes").glob("*.yaml"))
    assert len(recipes) == len(summary["front"]) >= 1
    recipe = load_recipe(recipes[0])
    assert recipe.scores.latency_ms > 0 and recipe.scores.settings["num_prompts"] == 2
    assert recipe.scores.speedup_ci[0] > 1 and recipe.scores.reference["rounds"] == 2
    for entry in summary["front"]:
        assert entry["speedup_ci"][0] > 1 and entry["transforms"] == ["sampler"]
    assert recipe.scores.quality_metric == "fidelity" and recipe.base is not None
    assert recipe.provenance.run_id == run.name
    assert summary["hypervolume"] >= 0
    # ... and `compress apply` takes it as it is.
    applied = CliRunner().invoke(
        app,
        ["apply", str(recipes[0]), "--model", str(cfg.model), "--out", str(run.parent / "applied")],
    )
    assert applied.exit_code == 0, applied.output
    assert (run.parent / "applied" / "recipe.yaml").is_file()
    csv = (run / "trials.csv").read_text().splitlines()
    assert len(csv) == 4 and csv[0].startswith("number,state,stage,pareto")


def test_failing_trials_are_recorded_and_the_search_goes_on(first_run):
    cfg, summary = first_run
    states = summary["states"]
    assert states["failed"] >= 1, "seed 3 draws pndm at least once"
    assert states["complete"] + states["stopped"] >= 1


def test_resume_loses_no_finished_trial(first_run):
    cfg, _ = first_run
    run = cfg.run
    before = {r.number: r for r in read_records(run)}
    stamps = {n: (trial_dir(run, n) / "trial.json").stat().st_mtime_ns for n in before}
    # A trial that was running when the search was killed: a folder without trial.json.
    write_json(trial_dir(run, 3) / "config.json", {"number": 3, "params": {"scheduler": "ddim"}})
    cfg2, sp = resume_config(run, trials=5)
    assert cfg2.trials == 5 and cfg2.model == cfg.model
    summary = run_search(cfg2, sp, resume=True)
    after = {r.number: r for r in read_records(run)}
    for n, r in before.items():  # untouched, byte for byte
        assert after[n] == r
        assert (trial_dir(run, n) / "trial.json").stat().st_mtime_ns == stamps[n]
    assert after[3].state == "interrupted"
    finished = [r for r in after.values() if r.state != "interrupted"]
    assert len(finished) == 5 and max(after) == 5  # numbering went on after the ledger's
    assert summary["trials"] == 6
    with pytest.raises(Exception, match="started with other model"):
        resume_config(run, model="elsewhere")
    assert json.loads((run / "search.json").read_text())["trials"] == 5


def test_resume_refuses_a_model_whose_weights_changed(tiny_dir: Path, tmp_path: Path) -> None:
    from compress.search.runner import pin_model_weights

    model, run = tmp_path / "pipe", tmp_path / "run"
    shutil.copytree(tiny_dir, model)
    run.mkdir()
    pin_model_weights(run, str(model))
    pin_model_weights(run, str(model))  # unchanged weights resume
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle of the tensor data
    weights.write_bytes(bytes(data))
    with pytest.raises(CompressError, match="changed since"):
        pin_model_weights(run, str(model))
