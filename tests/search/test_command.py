"""Driver-side checks and output without a cluster: training data, durations, console lines."""

from __future__ import annotations

import io

import pytest

from compress.errors import CompressError
from compress.evaluate.settings import EvalSettings
from compress.search.config import parse_duration
from compress.search.ledger import TrialRecord
from compress.search.runner import check_data
from compress.search.staging import TrialFailed
from compress.search.trial import TrialJob, _data, _prompts


def test_training_data_is_checked_before_launch_and_named_on_a_node(tmp_path):
    with pytest.raises(CompressError, match="does not exist"):
        check_data(str(tmp_path / "missing"), None)
    (tmp_path / "a.png").write_bytes(b"")  # an image without its caption
    with pytest.raises(CompressError, match="without a caption"):
        check_data(str(tmp_path), None)
    empty = tmp_path / "prompts.txt"
    empty.write_text("\n\n")
    with pytest.raises(CompressError, match="holds no prompts"):
        check_data(None, str(empty))
    job = TrialJob(
        run="r", run_id="r", model="m", space={}, space_source="s", settings=EvalSettings(),
        baseline_settings=EvalSettings(), stage_prompts=None, data=str(tmp_path / "gone"),
        prompts_file=str(tmp_path / "gone.txt"),
    )  # fmt: skip
    with pytest.raises(TrialFailed, match=f"{tmp_path / 'gone'} is not readable on this node"):
        _data(job)
    with pytest.raises(TrialFailed, match="gone.txt is not readable"):
        _prompts(job)


def test_durations():
    assert parse_duration("90") == parse_duration("90s") == 90
    assert parse_duration("12m") == 720 and parse_duration("1h30m") == 5400
    with pytest.raises(CompressError, match="not a duration"):
        parse_duration("soon")


def test_one_line_per_trial_when_piped():
    from rich.console import Console

    from compress.search.progress import ProgressCallback

    buf = io.StringIO()
    console = Console(file=buf, width=80, soft_wrap=True)  # as the CLI's console when piped
    progress = ProgressCallback(console, 2, [], 0.7)
    knobs = {f"knob_{i}": f"a-long-value-{i}" for i in range(8)}
    progress.record(
        TrialRecord(
            number=0, state="stopped", params=knobs, speedup=3.0, speedup_ci=[2.5, 3.4],
            quality=0.6, stopped_at={"prompts": 8, "training_fraction": 0.25}, training=True,
        )
    )  # fmt: skip
    progress.record(TrialRecord(number=1, state="failed", params=knobs, error="boom"))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and len(lines[0]) > 80
    assert "3.00x [2.50, 3.40]" in lines[0] and "0.25 of its training" in lines[0]
    from compress.cli import console as cli_console

    assert cli_console.soft_wrap  # pytest captures stdout: not a terminal
