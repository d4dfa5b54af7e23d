"""--track: a real two-trial search logged to a local MLflow store and TensorBoard event files,
read back with MLflow's own search and the event files' records; names and missing packages."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import CompressError
from compress.search.config import resolve_config
from compress.search.ledger import TrialResult, read_records
from compress.search.runner import run_search
from compress.search.tracking import metrics, tracking_callbacks

SPACE = {
    "name": "tiny",
    "search": {
        "trials": 2,
        "sampler": "tpe",
        "max_concurrent": 1,
        "cpus_per_trial": 1,
        "start": [{"scheduler": "euler"}, {"scheduler": "ddim"}],
    },
    "evaluation": {"num_prompts": 2, "timed_runs": 1, "warmup": 0, "resolution": 16},
    "staged": {"enabled": False},
    "baseline": {"steps": 4},  # the reference's usual call, cheaper than its 50 steps
    "transforms": {"sampler": {"fixed": {"steps": 1}}},
    "knobs": {
        "scheduler": {
            "sets": "sampler.scheduler",
            "type": "categorical",
            "choices": ["euler", "ddim"],
        }
    },
}


def _events(folder: Path) -> tuple[dict[str, list[float]], dict[str, str]]:
    """The scalars (by tag, in step order) and the hparams of the TensorBoard event files in
    `folder`. The files are TFRecords (length, its CRC, a serialized Event, its CRC); tensorboardX
    writes them but ships no reader, and tensorboard itself is not a dependency."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    scalars: dict[str, list[float]] = {}
    hparams: dict[str, str] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, []).append(value.simple_value)
                elif value.tag == "_hparams_/session_start_info":
                    info = HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    start = info.session_start_info.hparams
                    hparams |= {k: v.string_value for k, v in start.items()}
    return scalars, hparams


@pytest.mark.xdist_group("ray")  # one Ray cluster at a time
def test_a_search_logs_knobs_scores_and_artifacts_to_mlflow_and_tensorboard(
    tiny_dir, tmp_path, monkeypatch
):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    space = tmp_path / "tiny.yaml"
    space.write_text(yaml.safe_dump(SPACE))
    cfg, sp = resolve_config(
        str(space),
        model=str(tiny_dir),
        metric="fidelity",
        out=str(tmp_path / "run"),
        track=["mlflow,tensorboard"],
    )
    run_search(cfg, sp)
    run = cfg.run.resolve()
    records = {r.number: r for r in read_records(run)}
    assert sorted(records) == [0, 1] and all(r.state == "complete" for r in records.values())

    mlflow.set_tracking_uri(f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=[run.name], output_format="list")
    assert len(runs) == 2
    for tracked in runs:
        r = records[int(tracked.data.tags["trial"])]
        assert tracked.info.status == "FINISHED"
        assert tracked.data.params == {"scheduler": r.params["scheduler"]}  # knobs only
        m = tracked.data.metrics  # the last value of each: the trial's final scores
        assert m["stage"] == 2 and m["quality"] == pytest.approx(r.quality)
        assert m["speedup"] == pytest.approx(r.speedup)
        assert [m["speedup_low"], m["speedup_high"]] == pytest.approx(r.speedup_ci)
        assert m["latency_ms"] == pytest.approx(r.latency_ms)
        names = {a.path for a in mlflow.MlflowClient().list_artifacts(tracked.info.run_id)}
        assert {"recipe.yaml", "trial.json", "images"} <= names
        stored = Path(tracked.info.artifact_uri.removeprefix("file://"))
        assert stored.is_relative_to(run / "mlflow") and (stored / "recipe.yaml").is_file()

    for number, r in records.items():
        scalars, hparams = _events(run / "tensorboard" / f"{number:04d}")
        assert hparams == {"scheduler": r.params["scheduler"]}  # knobs only
        assert scalars["ray/tune/quality"][-1] == pytest.approx(r.quality, rel=1e-6)
        assert scalars["ray/tune/speedup_low"][-1] == pytest.approx(r.speedup_ci[0], rel=1e-6)
        assert not any("number" in tag or "origin" in tag for tag in scalars)


def test_tracker_names_split_on_commas_and_unknown_ones_are_refused(tmp_path):
    cfg, _ = resolve_config("miniature", out=str(tmp_path), track=["mlflow, tensorboard", "mlflow"])
    assert cfg.track == ["mlflow", "tensorboard"]
    with pytest.raises(CompressError, match="unknown tracker 'neptune'; choose from mlflow"):
        resolve_config("miniature", out=str(tmp_path), track=["mlflow,neptune"])
    given = CliRunner().invoke(app, ["search", "--track", "wandb,neptune", "--out", str(tmp_path)])
    assert given.exit_code != 0 and "unknown tracker 'neptune'" in str(given.exception)


def test_a_missing_tracker_package_names_what_to_install(tmp_path, monkeypatch):
    found = importlib.util.find_spec
    gone = {"wandb", "mlflow"}
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name in gone else found(name, *a)
    )
    with pytest.raises(CompressError, match=r"wandb is not installed.*pip install wandb"):
        tracking_callbacks(["wandb"], tmp_path)
    with pytest.raises(CompressError, match=r"pip install 'compress\[track\]'"):
        tracking_callbacks(["mlflow"], tmp_path)
    assert not (tmp_path / "mlflow").exists()


def test_metrics_are_the_reported_numbers():
    result = TrialResult(
        number=4, stage=2, quality=0.8, speedup=2.0, speedup_ci=[1.5, 2.5], latency_ms=10.0,
        scores={"peak_memory_mb": 120.0, "quality_parts": {"clip": 0.3}}, times={"build": 1.0},
        duplicate_of=1, node="n",
    ).report() | {"training_iteration": 2, "config": {"number": 4}}  # fmt: skip
    m = metrics(result)
    assert m["speedup_low"] == 1.5 and m["speedup_high"] == 2.5 and m["quality"] == 0.8
    assert m["peak_memory_mb"] == 120.0 and m["quality_parts/clip"] == 0.3
    assert m["times/build"] == 1.0 and m["training_iteration"] == 2
    assert "number" not in m and "duplicate_of" not in m and "speedup_ci" not in m
    assert all(isinstance(v, int | float) for v in m.values())


def test_an_unusable_mlflow_uri_fails_before_the_search(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # MLflow refuses folder stores
    with pytest.raises(CompressError, match="tracking URI .*mlruns cannot be used"):
        tracking_callbacks(["mlflow"], tmp_path / "run", str(tmp_path / "mlruns"))
