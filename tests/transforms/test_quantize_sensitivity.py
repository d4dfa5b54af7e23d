"""sensitivity: one block at a time, a drop per (block, format), a table, narrowed choices."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from compress.errors import CompressError
from compress.models.tiny import build_tiny_pipeline
from compress.transforms.quantize.sensitivity import (
    BASELINE,
    allowed_formats,
    blocks,
    sensitivity,
    write_table,
)


@pytest.fixture
def setup(tmp_path: Path):
    from compress.evaluate.quality.fidelity import FidelityMetric
    from compress.evaluate.settings import EvalSettings

    (tmp_path / "p.txt").write_text("a red seven on a blue background\na green digit two\n")
    metric = FidelityMetric(prompts=str(tmp_path / "p.txt"))
    return metric, EvalSettings(metric="fidelity", steps=2, num_prompts=1, timed_runs=1, warmup=0)


def test_one_block_at_a_time_table_and_narrowing(setup, tmp_path: Path) -> None:
    metric, settings = setup
    pipe = build_tiny_pipeline()
    original = pipe.unet
    # every block holds Linear layers (attention, or the ResNets' time projections)
    assert blocks(pipe) == [
        "down_blocks.0",
        "down_blocks.1",
        "mid_block",
        "up_blocks.0",
        "up_blocks.1",
    ]
    rows = sensitivity(pipe, ["int8_dynamic", "intx4_weight_only"], settings, metric=metric)
    assert pipe.unet is original  # the analysed pipeline is left untouched
    assert rows[0].block == BASELINE and rows[0].quality == pytest.approx(1.0)
    assert {(r.block, r.format) for r in rows[1:]} == {
        (b, f) for b in blocks(pipe) for f in ("int8_dynamic", "intx4_weight_only")
    }
    assert all(r.layers > 0 and r.quality < 1.0 and r.drop > 0 for r in rows[1:])
    int8 = {r.block: r.drop for r in rows if r.format == "int8_dynamic"}
    int4 = {r.block: r.drop for r in rows if r.format == "intx4_weight_only"}
    assert sum(int4.values()) > sum(int8.values())  # fewer bits, more damage

    table = write_table(rows, tmp_path / "s.csv")
    assert [r["block"] for r in csv.DictReader(table.open())] == [r.block for r in rows]
    assert json.loads(write_table(rows, tmp_path / "s.json").read_text())[1]["format"]
    allowed = allowed_formats(rows, max_drop=max(int8.values()))
    assert all("int8_dynamic" in fmts for fmts in allowed.values())
    assert allowed_formats(rows, max_drop=-1.0) == {b: [] for b in blocks(pipe)}


def test_impossible_format_fails_before_generating(setup) -> None:
    metric, settings = setup
    with pytest.raises(CompressError, match="need a CUDA GPU"):
        sensitivity(build_tiny_pipeline(), ["float8_dynamic"], settings, metric=metric)
    with pytest.raises(CompressError, match="unknown formats"):
        sensitivity(build_tiny_pipeline(), ["int3"], settings, metric=metric)


def test_cli_writes_the_table(tiny_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from compress.cli import app

    (tmp_path / "p.txt").write_text("a red seven on a blue background\n")
    args = [
        "sensitivity",
        "--model",
        str(tiny_dir),
        "--prompts",
        str(tmp_path / "p.txt"),
        "--steps",
        "2",
        "--formats",
        "int8_dynamic",
        "--out",
        str(tmp_path / "s.csv"),
    ]
    out = CliRunner().invoke(app, args)  # fmt: skip
    assert out.exit_code == 0, out.output
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert [r["format"] for r in rows] == ["full precision"] + ["int8_dynamic"] * 5
    assert "mid_block" in out.output
