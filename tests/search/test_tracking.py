"""--track: names, missing packages, unusable stores and the metrics logged (the real search
logged to MLflow and TensorBoard is in test_memory_search.py: one Ray search checks both)."""

from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest
from typer.testing import CliRunner

from compress.cli import app
from compress.errors import CompressError
from compress.search.config import resolve_config
from compress.search.ledger import TrialResult
from compress.search.tracking import metrics, tracking_callbacks


def events(folder: Path) -> tuple[dict[str, list[float]], dict[str, str]]:
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
