"""`compress export`: a finished search's trained candidate, written from the run's prefix cache
without training again, reproduces the images its trial was scored on."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import CompressError
from compress.search.config import resolve_config
from compress.search.export import export_trial
from compress.search.ledger import read_records, trial_dir
from compress.search.runner import run_search

pytestmark = pytest.mark.xdist_group("ray")  # one Ray cluster at a time

SPACE = {
    "name": "tiny-export",
    "search": {
        "trials": 2,
        "sampler": "tpe",
        "max_concurrent": 1,
        "cpus_per_trial": 1,
        "start": [{"recover": "yes", "steps": 2}, {"recover": "no", "steps": 1}],
    },
    "evaluation": {"num_prompts": 2, "timed_runs": 2, "warmup": 0, "resolution": 16},
    "staged": {"enabled": False},
    "transforms": {
        "prune_blocks": {"fixed": {"remove": ["mid_block"]}, "when": {"recover": "yes"}},
        "distill": {
            "fixed": {"steps": 3, "batch_size": 2, "samples": 4, "teacher_steps": 2},
            "when": {"recover": "yes"},
        },
        "sampler": {"fixed": {"scheduler": "euler", "guidance_scale": 2.0}},
    },
    "knobs": {
        "recover": {"type": "categorical", "choices": ["no", "yes"]},
        "steps": {"sets": "sampler.steps", "type": "int", "low": 1, "high": 2},
    },
}


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export")
    (folder / "space.yaml").write_text(yaml.safe_dump(SPACE))
    (folder / "prompts.txt").write_text("a red digit\na blue digit\n")
    cfg, sp = resolve_config(
        str(folder / "space.yaml"),
        model=str(tiny_dir),
        metric="fidelity",
        out=str(folder / "run"),
        prompts=str(folder / "prompts.txt"),
    )
    run_search(cfg, sp)
    records = {r.params["recover"]: r for r in read_records(cfg.run)}
    assert records["yes"].state == "complete" and records["yes"].training
    return cfg.run, records


def _scored(run: Path, number: int) -> np.ndarray:
    files = sorted((trial_dir(run, number) / "images").glob("[0-9]*.png"))
    return np.stack([np.asarray(Image.open(p).convert("RGB")) for p in files])


def test_export_takes_the_trained_prefix_from_the_cache_and_reproduces_the_images(
    finished, tmp_path, monkeypatch
):
    import compress
    import compress.train as train
    from compress.evaluate.run import generate_images
    from compress.search.config import resume_config
    from compress.search.staging import metric_for

    run, records = finished
    trained = records["yes"]

    def no_training(*args, **kwargs):
        raise AssertionError("export must not train")

    monkeypatch.setattr(train, "train", no_training)
    done = export_trial(run, str(trained.number), tmp_path / "out")
    assert done.cache_entry is not None and done.training_s > 0
    assert done.checked == 2 and done.max_level_diff == 0  # the scored images, exactly

    # the artifact reloads to the same images, with the trial's recipe, records and scores
    loaded = compress.load(str(done.folder))
    cfg, _ = resume_config(run)
    settings = cfg.eval_settings()
    prompts, seeds = metric_for(settings, {}).prompts(2)
    again = generate_images(loaded, prompts, seeds, settings)
    again = np.stack([np.asarray(i) for i in again])
    np.testing.assert_array_equal(again, _scored(run, trained.number))
    recipe = compress.load_recipe(done.folder / "recipe.yaml")
    assert recipe.scores.speedup == trained.speedup and recipe.provenance.trial_id

    # a training-free candidate is replayed on the model itself, from its records
    free = export_trial(run, records["no"].recipe, tmp_path / "free")
    assert free.cache_entry is None and free.max_level_diff == 0


def test_export_errors_name_what_is_missing(finished, tmp_path):
    run, records = finished
    with pytest.raises(CompressError, match="no trial 'nope'"):
        export_trial(run, "nope", tmp_path / "x")
    moved = tmp_path / "run"
    shutil.copytree(run, moved)
    shutil.rmtree(moved / "cache")
    with pytest.raises(CompressError, match="no longer holds the trained prefix"):
        export_trial(moved, str(records["yes"].number), tmp_path / "y")
    assert not (tmp_path / "y").exists()  # nothing written half


def test_export_command_prints_the_check_and_how_to_load(finished, tmp_path):
    run, records = finished
    result = CliRunner().invoke(
        app, ["export", str(run), str(records["yes"].number), "--out", str(tmp_path / "c")]
    )
    assert result.exit_code == 0, result.output
    assert "reproduce exactly" in result.output and "not spent again" in result.output
    assert "compress.load(" in result.output
